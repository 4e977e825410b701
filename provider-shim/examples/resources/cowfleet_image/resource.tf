# pulled by the storage agents from a URL
resource "cowfleet_image" "debian" {
  name         = "debian-12"
  source_url   = "https://images.example.org/debian-12.raw"
  format       = "raw"
  min_replicas = 2
  labels       = { os = "debian" }
}

# or uploaded from a local file: new content is a new image, so the name
# follows the content and the replacement is made before the old one goes
resource "cowfleet_image" "local" {
  name   = "disk-${substr(filesha256("./disk.raw"), 0, 12)}"
  path   = "./disk.raw"
  sha256 = filesha256("./disk.raw")

  lifecycle { create_before_destroy = true }
  timeouts {
    create = "20m"
  }
}
