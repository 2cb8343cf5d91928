"""What a Service Gateway does for pods: the default gateway of unmodified programs.

A pod is a network namespace linked to its SG node by a veth, as a Kubernetes
pod sits behind its node. The SG gives every service prefix that it can reach
and that SPA authorized a service address (a virtual IPv4 address every SG
agrees on) and a DNS name (cart.shop.dmsc), answers the pods' DNS, and carries
their TCP and UDP packets inside DMSC packets of type IPV4 addressed by name
(docs/protocol.md 4.6 and 13): to the service's name, and back to the
client's.

Modules, all sans I/O: `addresses` (service addresses, pod addresses, the
names of the two ends of a connection), `inet` (IPv4/TCP/UDP: parsing,
checksums, address rewriting, the ICMP and RST a gateway sends), `conntrack`
(the bounded table of carried connections), `dns` (queries and answers),
`gateway` (the SG's decisions for one packet from or to a pod). Imports the
data plane (names, wire) only; the runtime does the I/O (faces.PodFace, the
DNS socket) and the kernel's copy of the decisions.
"""
