"""The Terraform provider ``cowfleet``: a thin tfplugin5 shim over the REST API.

``main`` (the ``terraform-provider-cowfleet`` executable) serves the plugin
protocol; ``resources`` maps plans onto ``cowfleet.client`` calls; ``schema``
and ``values`` describe and encode Terraform values; ``install`` sets the
provider up for a local Terraform. See README.md beside this file.
"""
