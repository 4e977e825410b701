# an image made elsewhere is adopted by its name
terraform import cowfleet_image.debian debian-12
