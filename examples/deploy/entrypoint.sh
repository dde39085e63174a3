#!/bin/sh
# Container entrypoint: runs the image's command under spinguard.
#
#   COPY spinguard /usr/local/bin/spinguard
#   COPY libspinguard_shim.so /usr/local/lib/spinguard/libspinguard_shim.so
#   COPY entrypoint.sh /entrypoint.sh
#   ENTRYPOINT ["/entrypoint.sh"]
#   CMD ["/usr/local/bin/my-ebpf-agent", "--config", "/etc/agent.yaml"]
#
# `exec` makes spinguard PID 1 in the container's place of this script. As PID 1
# it does an init's job whichever mechanism guards the agent (in preload mode
# it stays as the parent, with no tracer): it reaps every zombie, forwards
# SIGTERM from `docker stop` / the kubelet to the agent and exits with the
# agent's status. Anything the agent starts is guarded too (the shim follows
# exec). The same works without this script: ENTRYPOINT ["spinguard", "run", "--"].
# SPINGUARD_SIGNALS (e.g. "SIGPROF,SIGALRM,SIGUSR2") overrides the guard set;
# SPINGUARD_EVENTS sends JSON events to a socket (spinguard listen).
set -eu
if [ "$#" -eq 0 ]; then
  echo "entrypoint.sh: no command given (set CMD in the image or pass one)" >&2
  exit 64
fi
exec spinguard run ${SPINGUARD_SIGNALS:+--signals "$SPINGUARD_SIGNALS"} -- "$@"
