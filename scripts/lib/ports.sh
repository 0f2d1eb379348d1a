# Sourced by the loopback run scripts: a free TCP port for a server or nginx to listen on.
# Ports are drawn below the kernel's ephemeral range: a port in it can be the local end of any
# outgoing connection (curl, nginx upstreams, the load tool), and binding it then fails with
# "Address already in use" even though nothing listens there.

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
