# A complete example: an image, a group of 5 instances of it, and outputs.
#
#   cowfleet terraform install          # once; prints the TF_CLI_CONFIG_FILE to export
#   export COWFLEET_ENDPOINT=... COWFLEET_TOKEN=...   # e.g. from 'cowfleet lab up'
#   terraform init && terraform apply
#   terraform output instances
#   terraform destroy

terraform {
  required_providers {
    cowfleet = { source = "cowfleet.local/cowfleet/cowfleet" }
  }
}

# endpoint and token from COWFLEET_ENDPOINT / COWFLEET_TOKEN, or set them here:
#   provider "cowfleet" { endpoint = "http://127.0.0.1:8080"  token = var.token }
provider "cowfleet" {}

variable "image_source" {
  description = "where the storage agents pull the image from (file:// on the storage node, or http(s)://)"
  default     = "file:///var/cache/cowfleet/demo.raw" # 'cowfleet demo' builds it there
}
variable "image_name" { default = "tf-demo" }
variable "group_name" { default = "web" }
variable "size" { default = 5 }
variable "min_replicas" { default = 1 } # the one-node lab has one storage node
variable "ssh_authorized_keys" {
  description = "OpenSSH public keys for the image's default user (cloud-init)"
  type        = list(string)
  default     = []
}

resource "cowfleet_image" "demo" {
  name         = var.image_name
  source_url   = var.image_source
  format       = "raw"
  min_replicas = var.min_replicas
  labels       = { purpose = "demo" }
  # or upload a local file instead of source_url; new content is a new image,
  # so let the name follow the content:
  #   name   = "disk-${substr(filesha256("./disk.raw"), 0, 12)}"
  #   path   = "./disk.raw"
  #   sha256 = filesha256("./disk.raw")

  # images are immutable and one in use cannot be deleted: a new image (a new
  # name) is made first, the group rolls onto it, then the old one goes
  lifecycle { create_before_destroy = true }
}

resource "cowfleet_instance_group" "web" {
  name   = var.group_name
  image  = cowfleet_image.demo.name # a new image rolls the instances within update_policy
  flavor = "small"
  size   = var.size # changes scale in place
  labels = { app = "web" }

  # every instance gets it verbatim in its NoCloud seed (cloud-init runs it;
  # the demo guest runs a #! script and shows its output on http://ADDRESS/)
  user_data           = "#!/bin/sh\necho hello from $(hostname)\n"
  ssh_authorized_keys = var.ssh_authorized_keys

  placement {
    strategy = "pack" # default: spread
  }
  update_policy {
    max_unavailable = 0 # keep every instance until its replacement is ready
    max_surge       = 1
  }
  # apply waits until status.ready == size (wait_for_ready = false to return at once),
  # for at most (default 10m each):
  # timeouts { create = "10m"  update = "10m"  delete = "5m" }
}

data "cowfleet_nodes" "compute" {
  role = "compute"
}

output "instances" {
  description = "id, node, rack, state, address and mac of every instance"
  value       = cowfleet_instance_group.web.instances
}

output "addresses" {
  description = "each instance's address on the routed instance network (curl http://ADDRESS/)"
  value       = { for i in cowfleet_instance_group.web.instances : i.id => i.address }
}

output "status" {
  value = cowfleet_instance_group.web.status
}

output "compute_nodes" {
  value = [for n in data.cowfleet_nodes.compute.nodes : "${n.name} (${n.rack})"]
}
