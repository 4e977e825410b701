data "cowfleet_nodes" "compute" {
  role = "compute"
}

output "compute_nodes" {
  value = [for n in data.cowfleet_nodes.compute.nodes : "${n.name} (${n.rack})" if n.healthy]
}
