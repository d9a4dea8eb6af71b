/* firstbyte - start a command with its stdout on a pipe and time it.
 *
 *   firstbyte [-t SECONDS] CMD [ARGS...]
 *
 * Forks and execs CMD (stdin /dev/null, stdout a pipe, stderr inherited) and prints one line on its own
 * stdout once the command has exited:
 *
 *   FIRSTBYTE first_ms=<fork -> first byte on the pipe, -1 if none> exit_ms=<fork -> child reaped>
 *             status=<exit status, 128+N for signal N> bytes=<count> out=<the first bytes, printable ones
 *             as they are, others as \xNN>
 *
 * The clock is CLOCK_MONOTONIC, read just before fork(). With -t, the command is killed (SIGKILL) after
 * SECONDS and status is 137 ("timeout=1" is added). Exit status: 0 when the command ran (whatever its
 * own status), 2 on a usage error or when it could not be started.
 * Built static on the host (gcc -static) for the rig's L1 (scripts/rig-membench).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	int argi = 1;
	double limit_ms = -1;
	if (argc > 2 && strcmp(argv[1], "-t") == 0) {
		limit_ms = atof(argv[2]) * 1e3;
		argi = 3;
	}
	if (argi >= argc) {
		fprintf(stderr, "usage: firstbyte [-t SECONDS] CMD [ARGS...]\n");
		return 2;
	}
	int p[2];
	if (pipe(p) != 0) {
		perror("firstbyte: pipe");
		return 2;
	}
	/* exec failures are reported through this close-on-exec pipe */
	int e[2];
	if (pipe2(e, O_CLOEXEC) != 0) {
		perror("firstbyte: pipe2");
		return 2;
	}
	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("firstbyte: fork");
		return 2;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		if (null >= 0) {
			dup2(null, 0);
			close(null);
		}
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		close(e[0]);
		execvp(argv[argi], argv + argi);
		int err = errno;
		if (write(e[1], &err, sizeof err) < 0) {
			/* nothing more to say */
		}
		_exit(127);
	}
	close(p[1]);
	close(e[1]);
	int err = 0;
	if (read(e[0], &err, sizeof err) == (ssize_t)sizeof err) {
		fprintf(stderr, "firstbyte: cannot run %s: %s\n", argv[argi], strerror(err));
		waitpid(pid, NULL, 0);
		return 2;
	}
	close(e[0]);

	double first = -1;
	long bytes = 0;
	char shown[64];
	size_t nshown = 0;
	int timed_out = 0;
	for (;;) {
		int wait_ms = -1;
		if (limit_ms >= 0) {
			double left = limit_ms - (now_ms() - t0);
			if (left <= 0) {
				kill(pid, SIGKILL);
				timed_out = 1;
				break;
			}
			wait_ms = (int)left + 1;
		}
		struct pollfd pfd = {.fd = p[0], .events = POLLIN};
		int n = poll(&pfd, 1, wait_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("firstbyte: poll");
			break;
		}
		if (n == 0)
			continue;
		char buf[4096];
		ssize_t r = read(p[0], buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break; /* EOF: the command (and whatever shared its stdout) is gone */
		if (first < 0)
			first = now_ms() - t0;
		for (ssize_t i = 0; i < r && nshown < sizeof shown; i++)
			shown[nshown++] = buf[i];
		bytes += r;
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
	}
	double end = now_ms() - t0;
	int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	printf("FIRSTBYTE first_ms=%.1f exit_ms=%.1f status=%d bytes=%ld%s out=", first, end, status,
	       bytes, timed_out ? " timeout=1" : "");
	for (size_t i = 0; i < nshown; i++) {
		unsigned char c = (unsigned char)shown[i];
		if (c > 0x20 && c < 0x7f && c != '\\')
			putchar(c);
		else
			printf("\\x%02x", c);
	}
	putchar('\n');
	return 0;
}
