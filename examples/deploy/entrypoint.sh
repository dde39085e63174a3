#!/bin/sh
# Container entrypoint: runs the image's command under spinguard.
#
#   COPY spinguard /usr/local/bin/spinguard
#   COPY libspinguard_shim.so /usr/local/lib/spinguard/libspinguard_shim.so
#   COPY entrypoint.sh /entrypoint.sh
#   ENTRYPOINT ["/entrypoint.sh"]
#   CMD ["/usr/local/bin/my-ebpf-agent", "--config", "/etc/agent.yaml"]
#
# `exec` makes spinguard PID 1's child-reaper-free replacement: it forwards
# SIGTERM from `docker stop` / the kubelet to the agent and exits with the
# agent's status. SPINGUARD_SIGNALS (e.g. "SIGPROF,SIGALRM,SIGUSR2") overrides
# the guard set; SPINGUARD_EVENTS sends JSON events to a socket (spinguard listen).
set -eu
if [ "$#" -eq 0 ]; then
  echo "entrypoint.sh: no command given (set CMD in the image or pass one)" >&2
  exit 64
fi
exec spinguard run ${SPINGUARD_SIGNALS:+--signals "$SPINGUARD_SIGNALS"} -- "$@"
