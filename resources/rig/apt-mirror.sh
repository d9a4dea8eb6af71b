# Sourced by qemu10.sh and qemu-l0fix.sh. bookworm_uri prints the URI of the host's apt source for
# Debian bookworm (the deb822 stanza whose Suites has plain "bookworm", or a one-line "deb" entry),
# or nothing when there is none: the private apt configurations of those scripts add suites and
# source packages on the same mirror, leaving the host's own configuration alone.
bookworm_uri() {
	local uri
	uri=$(awk -v RS= '/(^|\n)Suites:[^\n]*[[:space:]]bookworm([[:space:]]|\n|$)/ {
			if (match($0, /(^|\n)URIs:[[:space:]]*[^[:space:]\n]+/)) {
				s = substr($0, RSTART, RLENGTH); sub(/.*URIs:[[:space:]]*/, "", s); print s; exit } }' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' || true)
	echo "$uri"
}
