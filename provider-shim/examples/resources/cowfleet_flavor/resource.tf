# small, medium and large are built in; a flavor of your own:
resource "cowfleet_flavor" "tiny" {
  name       = "tiny"
  vcpus      = 1
  memory_mib = 256
  disk_gib   = 2
}
