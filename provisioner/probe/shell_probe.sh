# gpuctl fallback probe for hosts without python3: POSIX sh, prints one JSON document.
# It reports only what a shell can read reliably; the control host fills the rest as
# "not available".
esc() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037'; }
h=$(hostname 2>/dev/null | esc)
k=$(uname -r 2>/dev/null | esc)
osid=$(. /etc/os-release 2>/dev/null; printf %s "$ID" | esc)
osv=$(. /etc/os-release 2>/dev/null; printf %s "$VERSION_ID" | esc)
mem=$(awk '/^MemTotal:/ {printf "%.0f", $2 * 1024}' /proc/meminfo 2>/dev/null)
printf '{"probe":"sh","probe_version":1,"hostname":"%s","kernel":"%s",' "$h" "$k"
printf '"os":{"id":"%s","version_id":"%s","pretty_name":null},' "$osid" "$osv"
printf '"memory_bytes":%s,"errors":["python3 not found on the node: only basic facts collected"]}\n' "${mem:-null}"
