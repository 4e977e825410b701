"""cowfleet: fleets of ephemeral copy-on-write VMs.

Shared by the service, the agents and the CLI: ``cowfleet.models`` (the records
kept in ZooKeeper), ``cowfleet.zk`` (layout and connection), ``cowfleet.client``
(the HTTP client).
"""
__version__ = "0.1.0"
