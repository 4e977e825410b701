terraform import cowfleet_flavor.tiny tiny
