resource "cowfleet_instance_group" "web" {
  name   = "web"
  image  = cowfleet_image.debian.name # a new image rolls the instances within update_policy
  flavor = cowfleet_flavor.tiny.name
  size   = 3 # changes scale in place
  labels = { app = "web" }

  user_data           = "#!/bin/sh\necho hello from $(hostname)\n"
  ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC/xhYVffIZ2FdpoPjB8tu2qGVB3ApnQfbB7CKG5AfkK user@example"]

  placement {
    strategy     = "spread"
    max_per_node = 2
  }
  update_policy {
    max_unavailable = 0 # keep every instance until its replacement is ready
    max_surge       = 1
  }
  timeouts {
    create = "15m"
  }
}

output "addresses" {
  value = { for i in cowfleet_instance_group.web.instances : i.id => i.address }
}
