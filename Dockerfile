# DMSC lab in a container, for running the tests on a machine that is not Debian 12.
#
#   docker build -t dmsc-lab .
#   docker run --privileged --rm dmsc-lab make test
#
# It MUST run with --privileged: the lab creates network namespaces, veth pairs
# and raw AF_PACKET sockets, which an unprivileged container cannot.
# `make test` is the command (also the default CMD).
#
# UNTESTED: no container engine runs on the machine this was written on.
FROM debian:bookworm

ENV DEBIAN_FRONTEND=noninteractive
# make is needed to run `make setup`; setup.sh installs everything else.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /lab
COPY . /lab
RUN make setup

CMD ["make", "test"]
