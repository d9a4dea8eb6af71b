/* vfiovm-init: the /init of the initramfs vfiovm builds for `--exec` (docs/ci-runner.md).
 *
 * Built static by vmm/build.rs with the host's gcc and packed by vfiovm on every run, with:
 *   /vfiovm/cmd      the command, given to /bin/sh -c in the new root
 *   /vfiovm/cwd      the directory it runs in
 *   /vfiovm/shares   one line per share: "TAG ro|rw PATH" (PATH to the end of the line); the share
 *                    of "/" becomes the root, the others are mounted at their host path
 *   /vfiovm/modules  module file names under /vfiovm/mod, in load order
 *
 * It tells vfiovm how far it got through the runner port (0x5F0, docs/devices.md): phase 1 when
 * it runs, phase 2 when the command starts, then the command's status; 0x100 in the status
 * register if it cannot run the command, after a line "vfiovm-init: ..." on the kernel console
 * saying why. The command's stdout and stderr are /dev/hvc0 and /dev/hvc1 (two virtio consoles
 * that vfiovm writes to its own stdout and stderr), its stdin /dev/null. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define RUNNER_PORT 0x5f0
#define RUNNER_SIGNATURE 0x4e524656u /* "VFRN" */
#define REG_PHASE 0x8
#define REG_STATUS 0xc
#define STATUS_INIT_FAILED 0x100
#define MODULE_INIT_COMPRESSED_FILE 4
#define NEWROOT "/newroot"

static int have_port;
/* Where the command's root is: NEWROOT with a root share, else the initramfs itself (""). */
static const char *root = NEWROOT;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "vfiovm-init: ", 13) < 0 || write(fd, buf, n) < 0) {
			/* nowhere else to say it */
		}
		close(fd);
	}
}

static void report(unsigned reg, unsigned value)
{
	if (have_port)
		outl(value, RUNNER_PORT + reg);
}

/* Ends the run: the status reaches vfiovm through the runner port; without the port, power off. */
static void __attribute__((noreturn)) finish(unsigned status)
{
	sync();
	report(REG_STATUS, status);
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void __attribute__((noreturn)) fail(const char *fmt, ...)
{
	char buf[480];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	say("cannot run the command: %s", buf);
	finish(STATUS_INIT_FAILED);
}

/* The whole of a small file, NUL-terminated; NULL if it cannot be read. */
static char *slurp(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, len = 0;
	char *s = malloc(cap);
	for (;;) {
		if (!s) {
			close(fd);
			return NULL;
		}
		ssize_t n = read(fd, s + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len + 1 == cap) {
			cap *= 2;
			s = realloc(s, cap);
		}
	}
	close(fd);
	s[len] = 0;
	return s;
}

static void mkdirs(const char *path)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s", path);
	for (char *c = p + 1; *c; c++) {
		if (*c == '/') {
			*c = 0;
			mkdir(p, 0755);
			*c = '/';
		}
	}
	mkdir(p, 0755);
}

static int has_fs(const char *name)
{
	char *fs = slurp("/proc/filesystems");
	if (!fs)
		return 0;
	int found = 0;
	for (char *line = strtok(fs, "\n"); line && !found; line = strtok(NULL, "\n")) {
		char *t = strrchr(line, '\t');
		found = t && strcmp(t + 1, name) == 0;
	}
	free(fs);
	return found;
}

static void load_modules(void)
{
	char *list = slurp("/vfiovm/modules");
	if (!list)
		return;
	for (char *name = strtok(list, "\n"); name; name = strtok(NULL, "\n")) {
		char path[512];
		snprintf(path, sizeof(path), "/vfiovm/mod/%s", name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("module %s: %s", name, strerror(errno));
			continue;
		}
		size_t l = strlen(name);
		int compressed = l > 3 && (strcmp(name + l - 3, ".xz") == 0 || strcmp(name + l - 3, ".gz") == 0 ||
					   (l > 4 && strcmp(name + l - 4, ".zst") == 0));
		if (syscall(SYS_finit_module, fd, "", compressed ? MODULE_INIT_COMPRESSED_FILE : 0) != 0 &&
		    errno != EEXIST)
			say("module %s: %s", name, strerror(errno));
		close(fd);
	}
	free(list);
}

/* Waits up to 5 s for a device node devtmpfs creates once its driver has bound. */
static int wait_for(const char *path)
{
	for (int i = 0; i < 500; i++) {
		if (access(path, F_OK) == 0)
			return 1;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}

static int open_console(const char *path)
{
	int fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	/* Raw output: the command's bytes as written, no \n -> \r\n. */
	struct termios t;
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		tcsetattr(fd, TCSANOW, &t);
	}
	return fd;
}

/* Mounts the tag TAG of host path PATH at NEWROOT/PATH. */
static void mount_share(const char *tag, const char *mode, const char *path)
{
	char where[4096];
	snprintf(where, sizeof(where), "%s%s", root, strcmp(path, "/") == 0 ? "" : path);
	mkdirs(where);
	unsigned long flags = strcmp(mode, "ro") == 0 ? MS_RDONLY : 0;
	/* msize: what vfiovm's 9p server offers (docs/devices.md); the kernel takes less if its
	 * transport cannot. */
	if (mount(tag, where, "9p", flags, "trans=virtio,version=9p2000.L,msize=512000,cache=mmap,access=client") != 0)
		fail("mounting share %s (%s) at %s: %s", tag, path, where, strerror(errno));
}

/* What a read-only root needs to be usable: its own /dev, /proc, /sys, and tmpfs where programs
 * write. Directories that do not exist in the root are skipped. */
static void mount_system(void)
{
	static const struct {
		const char *dir, *type, *opts;
	} fs[] = {
		{"/dev", "devtmpfs", NULL},	   {"/proc", "proc", NULL},	  {"/sys", "sysfs", NULL},
		{"/tmp", "tmpfs", "mode=1777"},	   {"/run", "tmpfs", "mode=755"}, {"/var/tmp", "tmpfs", "mode=1777"},
		{"/var/log", "tmpfs", "mode=755"}, {"/root", "tmpfs", "mode=700"},
	};
	for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
		char where[256];
		snprintf(where, sizeof(where), "%s%s", root, fs[i].dir);
		struct stat st;
		if (stat(where, &st) != 0 || !S_ISDIR(st.st_mode))
			continue;
		if (!*root && i < 3)
			continue; /* the initramfs has them already */
		if (mount(fs[i].type, where, fs[i].type, MS_NOSUID, fs[i].opts) != 0)
			say("mounting %s on %s: %s", fs[i].type, fs[i].dir, strerror(errno));
	}
}

/* The root share (or the initramfs itself when there is none), the system mounts on it, then the
 * other shares at their host paths: a share under /tmp lands on the tmpfs, not under it. */
static void mount_shares(void)
{
	char *list = slurp("/vfiovm/shares");
	if (!list)
		fail("/vfiovm/shares is missing from the initramfs");
	int have_root = 0;
	for (int pass = 0; pass < 2; pass++) {
		char *copy = strdup(list);
		char *save = NULL;
		for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			char tag[64], mode[4];
			int off = 0;
			if (sscanf(line, "%63s %3s %n", tag, mode, &off) != 2 || off == 0)
				fail("bad share line '%s'", line);
			const char *path = line + off;
			int is_root = strcmp(path, "/") == 0;
			if (is_root != (pass == 0))
				continue;
			mount_share(tag, mode, path);
			have_root |= is_root;
		}
		free(copy);
		if (pass == 0) {
			if (!have_root)
				root = ""; /* the initramfs (with an --initramfs of the user's) is the root */
			mount_system();
		}
	}
	free(list);
}

int main(void)
{
	mkdir("/dev", 0755);
	mkdir("/proc", 0555);
	mkdir("/sys", 0555);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);

	/* The signature through /dev/port first (the kernel's own port reads): only where it is
	 * there does the init use in/out itself. Under another VMM the range reads as all ones, and
	 * an `in` from user mode there was seen to fault (QEMU as the VMM, nested). */
	unsigned char sig[4] = {0};
	int port = open("/dev/port", O_RDONLY | O_CLOEXEC);
	if (port >= 0) {
		if (pread(port, sig, sizeof(sig), RUNNER_PORT) != (ssize_t)sizeof(sig))
			memset(sig, 0, sizeof(sig));
		close(port);
	}
	unsigned got = (unsigned)sig[0] | (unsigned)sig[1] << 8 | (unsigned)sig[2] << 16 | (unsigned)sig[3] << 24;
	if (ioperm(RUNNER_PORT, 16, 1) == 0 && (port >= 0 ? got : inl(RUNNER_PORT)) == RUNNER_SIGNATURE)
		have_port = 1; /* a kernel without /dev/port (CONFIG_DEVPORT off): the init reads it */
	else
		say("no runner port at 0x%x: not started by vfiovm? the status cannot be reported", RUNNER_PORT);
	report(REG_PHASE, 1);

	load_modules();
	if (!wait_for("/dev/hvc1"))
		fail("no /dev/hvc0 and /dev/hvc1 (the command's stdout and stderr): the guest kernel needs "
		     "CONFIG_VIRTIO_PCI and CONFIG_VIRTIO_CONSOLE (built in, or as modules under the "
		     "--modules directory)");
	char *shares = slurp("/vfiovm/shares");
	if (shares && *shares && !has_fs("9p"))
		fail("the guest kernel cannot mount the shares (no 9p file system): it needs CONFIG_NET_9P, "
		     "CONFIG_NET_9P_VIRTIO and CONFIG_9P_FS (built in, or as modules under the --modules "
		     "directory)");
	free(shares);
	mount_shares();

	char *cmd = slurp("/vfiovm/cmd");
	char *cwd = slurp("/vfiovm/cwd");
	if (!cmd)
		fail("/vfiovm/cmd is missing from the initramfs");
	int out = open_console("/dev/hvc0");
	int err = open_console("/dev/hvc1");
	if (out < 0 || err < 0)
		fail("opening /dev/hvc0 and /dev/hvc1: %s", strerror(errno));

	report(REG_PHASE, 2);
	pid_t pid = fork();
	if (pid < 0)
		fail("fork: %s", strerror(errno));
	if (pid == 0) {
		setsid();
		if ((*root && chroot(root) != 0) || chdir("/") != 0) {
			dprintf(err, "vfiovm-init: chroot into the shared root: %s\n", strerror(errno));
			_exit(127);
		}
		if (cwd && *cwd && chdir(cwd) != 0)
			dprintf(err, "vfiovm-init: cannot change to %s: %s (running in /)\n", cwd, strerror(errno));
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) {
			dprintf(err, "vfiovm-init: setting up stdio: %s\n", strerror(errno));
			_exit(127);
		}
		clearenv();
		setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
		setenv("HOME", "/root", 1);
		setenv("TERM", "dumb", 1);
		setenv("LANG", "C.UTF-8", 1);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		dprintf(2, "vfiovm-init: /bin/sh: %s\n", strerror(errno));
		_exit(127);
	}
	/* Reap every process (we are pid 1) until the command itself ends. */
	int status = 0;
	for (;;) {
		int st;
		pid_t p = wait(&st);
		if (p == pid) {
			status = st;
			break;
		}
		if (p < 0 && errno != EINTR)
			fail("waiting for the command: %s", strerror(errno));
	}
	/* Everything the command wrote is out of the consoles before its status goes. */
	tcdrain(out);
	tcdrain(err);
	unsigned code = WIFEXITED(status) ? (unsigned)WEXITSTATUS(status) : 128u + (unsigned)WTERMSIG(status);
	finish(code & 0xff);
}
