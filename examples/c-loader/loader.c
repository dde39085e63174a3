// spinguard C loader: loads a socket-filter program with libbpf's real bpf_prog_load(),
// optionally under a signal storm, and prints ONE line describing what happened.
//
// Build (what tests/support/loaders.rs runs; libbpf-dev 1.1.2, glibc >= 2.34):
//   cc -O2 -Wall -Wextra -pthread examples/c-loader/loader.c $(pkg-config --cflags --libs libbpf) -o c-loader
// It must stay dynamically linked: libbpf's sys_bpf() calls glibc's syscall(), which is what the
// spinguard shim (LD_PRELOAD) hooks.
//
// Flags (same as examples/rust-loader.rs as far as libbpf allows; all optional):
//   --iters N           verifier cost: `r1 = 0; loop: r1 += 1; if r1 < N goto loop; r0 = 0; exit`
//                       (~1.2 ms per 1000 iterations; default 100000)
//   --threads N         concurrent loading threads, each calls bpf_prog_load() once (default 1)
//   --storm-hz HZ       storm rate per loading thread, 0 = no storm (default 0)
//   --storm tgkill|timer  tgkill: a storm thread sends the signal to every loading thread HZ times
//                       a second; timer: each loading thread arms its own timer_create(CLOCK_MONOTONIC)
//                       with SIGEV_THREAD_ID pointing at itself (default tgkill)
//   --storm-signal SIG  the storm signal (name with or without SIG, or a number; default SIGPROF)
//   --wait SECS         give up after SECS (fractions allowed) and report `spinning` (default 2)
//   --max-attempts N    passed to libbpf as bpf_prog_load_opts.attempts; 0 = libbpf's default, 5.
//                       libbpf cannot retry without bound, so unlike the Rust loader 0 is not "forever".
//   --cmd load          only `load` is supported here (test-run is a usage error)
//
// Output, one line on stdout:
//   loaded threads=1 attempts=1 max_attempts=1 ms=119 signals=0
//   failed errno=EAGAIN threads=1 attempts=5 max_attempts=5 ms=6 signals=5
//   spinning threads=1 attempts=3 max_attempts=3 ms=2001 signals=2000
// Exit status: 0 loaded, 2 spinning, 3 failed, 64 usage.
//
// Meaning of each field:
//   result        `loaded`: every thread got a program fd. `failed`: at least one thread's
//                 bpf_prog_load() returned an error (libbpf gives up after its attempts; on EAGAIN
//                 that is the livelock showing as an error). `spinning`: no failure, but at least
//                 one thread was still inside bpf_prog_load() when --wait ran out.
//   errno         (failed only) errno of the first thread that failed, by name (strerrorname_np).
//   threads       number of loading threads.
//   attempts      BPF_PROG_LOAD syscalls for OUR program, summed over threads. These are libbpf's
//                 own internal retries (sys_bpf_prog_load() loops on EAGAIN up to `attempts`
//                 times): the loader counts them by defining syscall() itself, which libbpf's PLT
//                 call binds to, and forwarding to the next definition (dlsym RTLD_NEXT: the
//                 shim's when preloaded, else glibc's). Only calls whose attr.insns is our program
//                 count, so libbpf's one-off feature probe (a tiny PROG_LOAD in
//                 bump_rlimit_memlock) is not counted. A call is counted when it is issued, so a
//                 spinning thread's in-flight attempt is included.
//   max_attempts  the largest per-thread attempt count.
//   ms            wall-clock milliseconds from the moment all threads were released to load until
//                 the last one returned (or until --wait expired).
//   signals       storm signals RECEIVED, summed over threads (counted by our handler). Standard
//                 signals do not queue, so this can be lower than the number sent. The shim delays
//                 delivery until the syscall returns, so under it signals still get counted.

#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXIT_LOADED 0
#define EXIT_SPINNING 2
#define EXIT_FAILED 3
#define EXIT_USAGE 64

#define MAX_THREADS 1024

enum storm_kind { STORM_TGKILL, STORM_TIMER };

struct options {
	long iters;
	long threads;
	long storm_hz;
	enum storm_kind storm;
	int storm_signal;
	double wait_secs;
	long max_attempts;
};

struct loader_thread {
	pthread_t handle;
	_Atomic pid_t tid;
	_Atomic unsigned long attempts;
	_Atomic int done;
	int fd;
	int err;
	struct timespec finished;
};

static struct options opts = {
	.iters = 100000,
	.threads = 1,
	.storm_hz = 0,
	.storm = STORM_TGKILL,
	.storm_signal = SIGPROF,
	.wait_secs = 2.0,
	.max_attempts = 0,
};

static struct bpf_insn prog[5];
static struct loader_thread *loaders;
static pthread_barrier_t start_barrier;
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond;
static long done_count;
static atomic_int storm_stop;
static _Atomic unsigned long signals_received;

// ---- counting attempts: our own syscall() in front of the shim's/glibc's -------------------------

typedef long (*syscall_fn)(long, ...);
static _Atomic(syscall_fn) next_syscall;
// Set by a loading thread to its own counter for the duration of bpf_prog_load().
static __thread _Atomic unsigned long *attempt_counter;

static syscall_fn resolve_next_syscall(void)
{
	syscall_fn f = atomic_load_explicit(&next_syscall, memory_order_acquire);
	if (f == NULL) {
		// glibc's dlsym does not call the public syscall() itself, so this cannot recurse.
		f = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
		atomic_store_explicit(&next_syscall, f, memory_order_release);
	}
	return f;
}

// Resolve before main so the hot path (which may run in signal handlers or inside the shim's own
// runtime, since every syscall() in the process now binds here) never has to call dlsym.
__attribute__((constructor)) static void init_next_syscall(void)
{
	resolve_next_syscall();
}

// Every syscall() call in the process (libbpf's, the shim's, anyone's) lands here first. Like
// glibc's own syscall(), it reads six argument registers whether or not the caller passed them:
// on the x86_64 and aarch64 ABIs that reads whatever is there, which the kernel ignores for
// syscalls taking fewer arguments. It must stay allocation-free, lock-free and async-signal-safe.
long syscall(long nr, ...)
{
	va_list ap;
	va_start(ap, nr);
	long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
	long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
	va_end(ap);

	if (nr == SYS_bpf && a1 == BPF_PROG_LOAD && attempt_counter != NULL && a2 != 0 &&
	    ((const union bpf_attr *)a2)->insns == (uint64_t)(uintptr_t)prog)
		atomic_fetch_add_explicit(attempt_counter, 1, memory_order_relaxed);

	syscall_fn f = resolve_next_syscall();
	if (f == NULL) {
		errno = ENOSYS;
		return -1;
	}
	return f(nr, a1, a2, a3, a4, a5, a6);
}

// ---- the program ----------------------------------------------------------------------------------

static void build_program(long iters)
{
	// r1 = 0; loop: r1 += 1; if r1 < iters goto loop; r0 = 0; exit
	prog[0] = (struct bpf_insn){ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_1, .imm = 0 };
	prog[1] = (struct bpf_insn){ .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = BPF_REG_1, .imm = 1 };
	prog[2] = (struct bpf_insn){
		.code = BPF_JMP | BPF_JLT | BPF_K, .dst_reg = BPF_REG_1, .off = -2, .imm = (int32_t)iters
	};
	prog[3] = (struct bpf_insn){ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 };
	prog[4] = (struct bpf_insn){ .code = BPF_JMP | BPF_EXIT };
}

// ---- time ------------------------------------------------------------------------------------------

static struct timespec now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts;
}

static long long ts_ns(struct timespec ts)
{
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct timespec ns_ts(long long ns)
{
	return (struct timespec){ .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
}

// ---- storm -----------------------------------------------------------------------------------------

static void count_signal(int sig)
{
	(void)sig;
	atomic_fetch_add_explicit(&signals_received, 1, memory_order_relaxed);
}

static void *tgkill_storm(void *arg)
{
	(void)arg;
	long long period = 1000000000LL / opts.storm_hz;
	pid_t pid = getpid();
	pthread_barrier_wait(&start_barrier);
	long long next = ts_ns(now_mono());
	while (!atomic_load(&storm_stop)) {
		next += period;
		struct timespec at = ns_ts(next);
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
			;
		long long now = ts_ns(now_mono());
		if (now > next + period)
			next = now; // fell behind (busy machine): keep the rate, do not burst
		for (long i = 0; i < opts.threads; i++) {
			pid_t tid = atomic_load(&loaders[i].tid);
			if (tid > 0 && !atomic_load(&loaders[i].done))
				syscall(SYS_tgkill, pid, tid, opts.storm_signal);
		}
	}
	return NULL;
}

static timer_t arm_thread_timer(pid_t tid, int *armed)
{
	timer_t timer = 0;
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = opts.storm_signal;
	// glibc < 2.35 does not name the field sigev_notify_thread_id.
	sev._sigev_un._tid = tid;
	*armed = 0;
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) {
		perror("c-loader: timer_create");
		return timer;
	}
	long long period = 1000000000LL / opts.storm_hz;
	struct itimerspec its = { .it_interval = ns_ts(period), .it_value = ns_ts(period) };
	if (timer_settime(timer, 0, &its, NULL) != 0) {
		perror("c-loader: timer_settime");
		timer_delete(timer);
		return timer;
	}
	*armed = 1;
	return timer;
}

// ---- loading threads -------------------------------------------------------------------------------

static void *load_thread(void *arg)
{
	struct loader_thread *self = arg;
	atomic_store(&self->tid, (pid_t)syscall(SYS_gettid));
	pthread_barrier_wait(&start_barrier);

	int timer_armed = 0;
	timer_t timer = 0;
	if (opts.storm_hz > 0 && opts.storm == STORM_TIMER)
		timer = arm_thread_timer(atomic_load(&self->tid), &timer_armed);

	LIBBPF_OPTS(bpf_prog_load_opts, load_opts, .attempts = (int)opts.max_attempts);
	attempt_counter = &self->attempts;
	int fd = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "spin_loop", "GPL", prog,
			       sizeof(prog) / sizeof(prog[0]), &load_opts);
	int err = errno;
	attempt_counter = NULL;

	if (timer_armed)
		timer_delete(timer);

	pthread_mutex_lock(&done_lock);
	self->fd = fd;
	self->err = fd < 0 ? err : 0;
	self->finished = now_mono();
	atomic_store(&self->done, 1);
	done_count++;
	pthread_cond_signal(&done_cond);
	pthread_mutex_unlock(&done_lock);
	return NULL;
}

// ---- command line ----------------------------------------------------------------------------------

static void usage(FILE *out)
{
	fprintf(out,
		"usage: c-loader [--iters N] [--threads N] [--storm-hz HZ] [--storm tgkill|timer]\n"
		"                [--storm-signal SIG] [--wait SECS] [--max-attempts N] [--cmd load]\n");
}

static _Noreturn void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "c-loader: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	usage(stderr);
	exit(EXIT_USAGE);
}

static long parse_long(const char *flag, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "c-loader: bad value for %s: '%s' (want an integer in %ld..=%ld)\n", flag, s,
			min, max);
		usage(stderr);
		exit(EXIT_USAGE);
	}
	return v;
}

static int parse_signal(const char *s)
{
	static const struct {
		const char *name;
		int num;
	} names[] = {
		{ "PROF", SIGPROF }, { "VTALRM", SIGVTALRM }, { "ALRM", SIGALRM },
		{ "USR1", SIGUSR1 }, { "USR2", SIGUSR2 },     { "CHLD", SIGCHLD },
		{ "WINCH", SIGWINCH }, { "URG", SIGURG },     { "IO", SIGIO },
	};
	const char *name = strncasecmp(s, "SIG", 3) == 0 ? s + 3 : s;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i].name) == 0)
			return names[i].num;
	char *end;
	long v = strtol(s, &end, 10);
	if (end != s && *end == '\0' && v >= 1 && v <= SIGRTMAX && v != SIGKILL && v != SIGSTOP)
		return (int)v;
	usage_error("bad --storm-signal '%s' (a catchable signal name or number)", s);
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		char *flag = argv[i];
		if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (strncmp(flag, "--", 2) != 0)
			usage_error("unexpected argument '%s'", flag);
		// Accept both `--flag value` and `--flag=value`.
		static const char *const known[] = { "--iters", "--threads", "--storm-hz",
						     "--storm", "--storm-signal", "--wait",
						     "--max-attempts", "--cmd" };
		char *value = strchr(flag, '=');
		if (value != NULL)
			*value++ = '\0';
		int is_known = 0;
		for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
			is_known |= strcmp(flag, known[k]) == 0;
		if (!is_known)
			usage_error("unknown flag '%s'", flag);
		if (value == NULL) {
			if (i + 1 >= argc)
				usage_error("%s needs a value", flag);
			value = argv[++i];
		}
		if (strcmp(flag, "--iters") == 0) {
			opts.iters = parse_long(flag, value, 1, INT32_MAX);
		} else if (strcmp(flag, "--threads") == 0) {
			opts.threads = parse_long(flag, value, 1, MAX_THREADS);
		} else if (strcmp(flag, "--storm-hz") == 0) {
			opts.storm_hz = parse_long(flag, value, 0, 1000000);
		} else if (strcmp(flag, "--storm") == 0) {
			if (strcmp(value, "tgkill") == 0)
				opts.storm = STORM_TGKILL;
			else if (strcmp(value, "timer") == 0)
				opts.storm = STORM_TIMER;
			else
				usage_error("bad --storm '%s' (tgkill or timer)", value);
		} else if (strcmp(flag, "--storm-signal") == 0) {
			opts.storm_signal = parse_signal(value);
		} else if (strcmp(flag, "--wait") == 0) {
			char *end;
			double w = strtod(value, &end);
			if (end == value || *end != '\0' || !(w > 0) || w > 86400)
				usage_error("bad --wait '%s' (seconds, > 0)", value);
			opts.wait_secs = w;
		} else if (strcmp(flag, "--max-attempts") == 0) {
			opts.max_attempts = parse_long(flag, value, 0, INT_MAX);
		} else if (strcmp(flag, "--cmd") == 0) {
			if (strcmp(value, "load") != 0)
				usage_error("--cmd '%s' is not supported by the C loader (only load)", value);
		} else {
			usage_error("unknown flag '%s'", flag);
		}
	}
}

// ---- main ------------------------------------------------------------------------------------------

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	build_program(opts.iters);

	// The storm signal must not kill us: count it and return.
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = count_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(opts.storm_signal, &sa, NULL) != 0) {
		perror("c-loader: sigaction");
		return EXIT_USAGE;
	}

	pthread_condattr_t cattr;
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&done_cond, &cattr);

	loaders = calloc((size_t)opts.threads, sizeof(*loaders));
	if (loaders == NULL) {
		perror("c-loader: calloc");
		return EXIT_FAILED;
	}
	int tgkill_storm_on = opts.storm_hz > 0 && opts.storm == STORM_TGKILL;
	unsigned participants = (unsigned)opts.threads + 1 + (tgkill_storm_on ? 1 : 0);
	pthread_barrier_init(&start_barrier, NULL, participants);

	for (long i = 0; i < opts.threads; i++) {
		loaders[i].fd = -1;
		int rc = pthread_create(&loaders[i].handle, NULL, load_thread, &loaders[i]);
		if (rc != 0) {
			fprintf(stderr, "c-loader: pthread_create: %s\n", strerror(rc));
			return EXIT_FAILED;
		}
	}
	pthread_t storm;
	if (tgkill_storm_on) {
		int rc = pthread_create(&storm, NULL, tgkill_storm, NULL);
		if (rc != 0) {
			fprintf(stderr, "c-loader: pthread_create: %s\n", strerror(rc));
			return EXIT_FAILED;
		}
	}

	pthread_barrier_wait(&start_barrier);
	struct timespec start = now_mono();
	struct timespec deadline = ns_ts(ts_ns(start) + (long long)(opts.wait_secs * 1e9));

	pthread_mutex_lock(&done_lock);
	while (done_count < opts.threads) {
		if (pthread_cond_timedwait(&done_cond, &done_lock, &deadline) == ETIMEDOUT)
			break;
	}
	long finished = done_count;
	long long end_ns = ts_ns(now_mono());
	if (finished == opts.threads) {
		end_ns = 0;
		for (long i = 0; i < opts.threads; i++)
			if (ts_ns(loaders[i].finished) > end_ns)
				end_ns = ts_ns(loaders[i].finished);
	}
	int first_err = 0;
	for (long i = 0; i < opts.threads && first_err == 0; i++)
		if (atomic_load(&loaders[i].done) && loaders[i].fd < 0)
			first_err = loaders[i].err;
	pthread_mutex_unlock(&done_lock);

	atomic_store(&storm_stop, 1);
	if (tgkill_storm_on && finished == opts.threads)
		pthread_join(storm, NULL);

	unsigned long attempts = 0, max_attempts = 0;
	for (long i = 0; i < opts.threads; i++) {
		unsigned long a = atomic_load(&loaders[i].attempts);
		attempts += a;
		if (a > max_attempts)
			max_attempts = a;
	}
	long long ms = (end_ns - ts_ns(start)) / 1000000LL;
	unsigned long signals = atomic_load(&signals_received);

	int code;
	if (first_err != 0) {
		const char *name = strerrorname_np(first_err);
		char num[16];
		if (name == NULL) {
			snprintf(num, sizeof(num), "%d", first_err);
			name = num;
		}
		printf("failed errno=%s ", name);
		code = EXIT_FAILED;
	} else if (finished < opts.threads) {
		printf("spinning ");
		code = EXIT_SPINNING;
	} else {
		printf("loaded ");
		code = EXIT_LOADED;
	}
	printf("threads=%ld attempts=%lu max_attempts=%lu ms=%lld signals=%lu\n", opts.threads, attempts,
	       max_attempts, ms, signals);
	fflush(stdout);
	// Threads may still be inside the kernel: leave without joining them or running destructors.
	_exit(code);
}
