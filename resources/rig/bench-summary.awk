# Medians of the "BENCH <vfiovm|qemu> key=value..." lines on stdin, key by key, and the vfiovm/QEMU
# ratio of each (scripts/rig-bench-virtio, scripts/rig-bench-exec). With fio_ios and
# exits_noconsole keys (the virtio benchmark) also the exits each fio I/O adds.
	{ for (i = 3; i <= NF; i++) { split($i, kv, "="); if (!(kv[1] in seen)) { seen[kv[1]] = 1; keys[++nk] = kv[1] }
		v[$2, kv[1], ++n[$2, kv[1]]] = kv[2] } }
	function minv(k,   i, r) { r = v["vfiovm", k, 1]; for (i = 2; i <= n["vfiovm", k]; i++) if (v["vfiovm", k, i] + 0 < r + 0) r = v["vfiovm", k, i]; return r }
	function maxv(k,   i, r) { r = v["vfiovm", k, 1]; for (i = 2; i <= n["vfiovm", k]; i++) if (v["vfiovm", k, i] + 0 > r + 0) r = v["vfiovm", k, i]; return r }
	function med(who, k,   m, a, i, j, t) { m = n[who, k]; for (i = 1; i <= m; i++) a[i] = v[who, k, i]
		for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return m ? a[int((m + 1) / 2)] : 0 }
	END {
		printf "\nmedians (vfiovm %d rounds, QEMU %d):\n  %-34s %14s %14s %8s\n", n["vfiovm", keys[1]], n["qemu", keys[1]], "", "vfiovm", "qemu 10", "ratio"
		for (i = 1; i <= nk; i++) { k = keys[i]; a = med("vfiovm", k); b = med("qemu", k)
			if (k == "exits_noconsole" || k == "fio_ios") printf "  %-34s %14s %14s\n", k, a, (n["qemu", k] ? b : "-")
			else printf "  %-34s %14s %14s %8s\n", k, a, b, (b > 0 ? sprintf("%.2f", a / b) : "-") }
		# exits per I/O: the rounds do the same boot and iperf3 but different numbers of fio I/Os
		# (each job runs for a fixed time), so the slope of the exits over the I/Os, round by
		# round, is what each I/O adds (least squares)
		m = n["vfiovm", "fio_ios"]
		if (m >= 2) { sx = sy = 0; for (i = 1; i <= m; i++) { sx += v["vfiovm", "fio_ios", i]; sy += v["vfiovm", "exits_noconsole", i] }
			mx = sx / m; my = sy / m; sxx = sxy = 0
			for (i = 1; i <= m; i++) { dx = v["vfiovm", "fio_ios", i] - mx; sxx += dx * dx; sxy += dx * (v["vfiovm", "exits_noconsole", i] - my) }
			if (sxx > 0) printf "  vfiovm exits to userspace (not the console) per fio I/O: %.5f (slope over %d rounds of %d-%d I/Os; whole-run exits %d-%d)\n", sxy / sxx, m, minv("fio_ios"), maxv("fio_ios"), minv("exits_noconsole"), maxv("exits_noconsole") }
	}
