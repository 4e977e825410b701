terraform {
  required_providers {
    cowfleet = { source = "cowfleet.local/cowfleet/cowfleet" }
  }
}

# endpoint and token default to $COWFLEET_ENDPOINT and $COWFLEET_TOKEN
# ('cowfleet lab up' prints both); 'cowfleet terraform install' installs the provider
provider "cowfleet" {
  endpoint = "http://127.0.0.1:8080"
  token    = var.cowfleet_token
}

variable "cowfleet_token" {
  type      = string
  sensitive = true
}
