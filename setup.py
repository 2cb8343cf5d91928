"""Packaging for the DMSC lab: installed editable into .venv by scripts/setup.sh.

Dependencies are pinned exactly so every machine (developer, CI, container)
runs the same versions; bump them deliberately.  The pins need Python 3.11
(hypothesis 6.170 requires >= 3.11); Debian 12's /usr/bin/python3 is 3.11.
Mininet itself comes from Debian (python3 --system-site-packages), not PyPI.
"""

from setuptools import find_packages, setup

setup(
    name="dmsc-lab",
    version="0.1.0",
    description="Emulation lab for Distributed Micro-Service Communication (name-based service routing)",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=[
        "forwarder", "forwarder.*",
        "controller", "controller.*",
        "topologies", "topologies.*",
        "experiments", "experiments.*",
    ]),
    install_requires=[
        "scapy==2.8.0",
        "PyYAML==6.0.4",
        "pyroute2==0.9.7",
        "cryptography==50.0.2",
        "hypothesis==6.170.17",
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        # The SCSC (controller/) is an os-ken application; Ryu does not run on Python >= 3.10.
        # os-ken's own requirements are pinned too; Routes and WebOb also serve its REST API.
        "os-ken==4.2.2",
        "Routes==2.5.1",
        "WebOb==1.8.11",
        "eventlet==0.41.3",
        "oslo.config==10.7.0",
        "netaddr==1.3.0",
        "msgpack==1.2.4",
        "ncclient==0.7.1",
        "pbr==7.1.3",
        # experiments/ draw their plots with matplotlib (Agg backend); its own requirements pinned too.
        "matplotlib==3.11.2",
        "numpy==2.4.6",
        "pillow==13.0.0",
        "contourpy==1.3.3",
        "cycler==0.12.1",
        "fonttools==4.68.0",
        "kiwisolver==1.5.1",
        "python-dateutil==4.0.0",
    ],
)
