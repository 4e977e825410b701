data "cowfleet_image" "base" {
  name = "debian-12"
}

output "base_sha256" {
  value = data.cowfleet_image.base.sha256
}
