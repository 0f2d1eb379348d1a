# Sourced by the loopback run scripts (proxy-run.sh, multi-replica-run.sh), which define `log` and
# `die`: free ports, stopping the processes they started, and nginx (installed when missing).

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free TCP port for a server or nginx to listen on, drawn below the kernel's ephemeral range:
# a port in it can be the local end of any outgoing connection (curl, nginx upstreams, the load
# tool), and binding it then fails with "Address already in use" though nothing listens there.
free_port() {
  local low=32768 p
  read -r low _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  local top=$(( low > 11000 ? low - 1 : 30000 ))
  for _ in $(seq 100); do
    p=$((10000 + RANDOM % (top - 10000)))
    port_in_use "$p" || { echo "$p"; return; }
  done
  echo "no free port found" >&2
  exit 1
}

# stop_pids PID...: TERM, up to 5 s each, then KILL.
stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# Sets NGINX to the nginx binary, installing Debian's nginx-light when there is none (root only);
# NGINX_INSTALLED=1 when it did. Debian's postinst would start the packaged nginx on port 80, so
# service starts are forbidden for the install (policy-rc.d exit 101) unless a policy exists.
ensure_nginx() {
  NGINX=$(command -v nginx || true)
  [[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
  NGINX_INSTALLED=0
  [[ -n $NGINX ]] && return 0
  [[ $(id -u) == 0 ]] || die "nginx is missing and we are not root: apt-get install nginx-light"
  log "installing nginx-light (apt)"
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq nginx >/dev/null
  [[ $own_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x $NGINX ]] || die "nginx install failed"
  NGINX_INSTALLED=1
}
