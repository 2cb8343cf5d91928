"""The DMSC forwarder: Service Gateway and Service Router data plane."""
__version__ = "0.1.0"
