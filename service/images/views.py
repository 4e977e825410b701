from cowfleet.service.images import service
from cowfleet.service.images.schemas import ImageSchema, ImageSpecSchema
from cowfleet.service.resource import crud_blueprint

bp = crud_blueprint("images", "/v1/images", service, ImageSpecSchema, ImageSchema, kind="image")
