"""The demo shop: frontend -> catalog, cart, payment, deployed by the lab (topologies/lab)."""
