"""canary-forwarder: Thinkst Canary webhooks to your SIEM."""

__version__ = "0.1.0"
