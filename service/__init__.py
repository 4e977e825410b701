"""The control service: a stateless Flask app; all state is in ZooKeeper.

Run it under gunicorn: ``gunicorn 'cowfleet.service:create_app()'`` (or
``cowfleet serve``). Configuration comes from the environment:
``COWFLEET_ZK`` (connection string, every server listed, optional chroot),
``COWFLEET_TOKENS_FILE`` (bearer tokens and their roles) and
``COWFLEET_SECRET_FILE`` (the cluster secret: ZooKeeper ACLs, P2P signatures;
``cowfleet.config``).
"""
from cowfleet.service.app import create_app

__all__ = ["create_app"]
