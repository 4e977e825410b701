from cowfleet.service.flavors import service
from cowfleet.service.flavors.schemas import FlavorSchema
from cowfleet.specs import FlavorSpecSchema
from cowfleet.service.resource import crud_blueprint

bp = crud_blueprint("flavors", "/v1/flavors", service, FlavorSpecSchema, FlavorSchema, kind="flavor")
