/* The corners of the ptrace guard (tests/corners.rs), one program, one mode
 * per corner. Each mode loads the slow-to-verify loop program and prints one
 * line: `done key=value...`, `loaded ...`, `spinning ...` or `failed ...`.
 *
 *   corners longjmp ROUNDS       a SIGUSR1 handler that siglongjmps out of a
 *                                load; the mask changed after, then a load:
 *                                the mask must be exactly the program's
 *   corners handler-loads N      200 Hz SIGUSR1 whose handler loads, N loads
 *                                in main: every mask exact, and it finishes
 *   corners children N           one load (no retry) while N children exit
 *   corners own-filter           its own filter returns SECCOMP_RET_TRACE for
 *                                getppid: ENOSYS, as without a tracer
 *   corners zombie-leader SECS   main calls pthread_exit; a thread loads
 *                                (retrying) under a 1 kHz SIGPROF storm
 *   corners int80 SECS           bpf through int 0x80 (i386 ABI) from 64-bit
 *                                code, retrying, under a 1 kHz SIGPROF storm
 *   corners load-idle N          N loads (retrying) under a 1 kHz SIGPROF
 *                                storm, then idle until killed
 *
 * --wait-traced (first argument): start only once a tracer is attached, plus
 * 300 ms for it to seize every thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

/* r1 = 0; loop: r1 += 1; if r1 < iters goto loop; r0 = 0; exit */
static void loop_program(struct bpf_insn *insns, int iters) {
    memset(insns, 0, 5 * sizeof *insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; insns[0].dst_reg = 1;
    insns[1].code = BPF_ALU64 | BPF_ADD | BPF_K; insns[1].dst_reg = 1; insns[1].imm = 1;
    insns[2].code = BPF_JMP | BPF_JLT | BPF_K; insns[2].dst_reg = 1; insns[2].off = -2; insns[2].imm = iters;
    insns[3].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[4].code = BPF_JMP | BPF_EXIT;
}

/* One BPF_PROG_LOAD through glibc's syscall(); the fd is closed. */
static long load_once(int iters) {
    struct bpf_insn insns[5];
    loop_program(insns, iters);
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insn_cnt = 5;
    a.insns = (uintptr_t)insns;
    a.license = (uintptr_t)"GPL";
    long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (fd >= 0) {
        close((int)fd);
        return 0;
    }
    return -errno;
}

/* Loads until it works; counts EAGAIN/EINTR results. */
static long load_retrying(int iters, long *eagain) {
    for (;;) {
        long r = load_once(iters);
        if (r != -EAGAIN && r != -EINTR)
            return r;
        (*eagain)++;
    }
}

static unsigned long long mask_now(void) {
    sigset_t s;
    sigprocmask(SIG_SETMASK, NULL, &s);
    unsigned long long m = 0;
    for (int sig = 1; sig <= 64; sig++)
        if (sigismember(&s, sig) == 1)
            m |= 1ULL << (sig - 1);
    return m;
}

static void on(int sig, void (*handler)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* A thread that tgkills `storm_target` with `storm_sig` at `storm_hz` while
 * `storm_on`. */
static volatile pid_t storm_target;
static volatile int storm_on, storm_sig, storm_hz, storm_stop;

static void *storm(void *arg) {
    (void)arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long period = 1000000000L / storm_hz;
    while (!storm_stop) {
        if (storm_on && storm_target)
            syscall(SYS_tgkill, getpid(), storm_target, storm_sig);
        next.tv_nsec += period;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    return NULL;
}

static void start_storm(int sig, int hz, pid_t target) {
    pthread_t t;
    storm_sig = sig;
    storm_hz = hz;
    storm_target = target;
    if (pthread_create(&t, NULL, storm, NULL) != 0) {
        perror("corners: pthread_create");
        exit(3);
    }
}

/* ---- longjmp ------------------------------------------------------------ */

static sigjmp_buf env;
static volatile int jumpable;
static volatile long jumps;

static void on_usr1_jump(int sig) {
    (void)sig;
    if (jumpable) {
        jumpable = 0;
        jumps++;
        siglongjmp(env, 1);
    }
}

static int mode_longjmp(int rounds) {
    on(SIGUSR1, on_usr1_jump, 0);
    start_storm(SIGUSR1, 1000, gettid_());
    long errors = 0, eagain = 0;
    for (int r = 0; r < rounds; r++) {
        jumpable = 1;
        storm_on = 1;
        if (sigsetjmp(env, 1) == 0) {
            /* ~120 ms to verify: SIGUSR1 (not in the guard set) cuts it
             * short, and its handler never returns to it. */
            for (;;)
                load_once(100000);
        }
        storm_on = 0;
        jumpable = 0;
        /* The program changes its own mask, then loads. */
        sigset_t usr2;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        sigprocmask(r % 2 == 0 ? SIG_BLOCK : SIG_UNBLOCK, &usr2, NULL);
        unsigned long long expected = mask_now();
        long rc = load_retrying(2000, &eagain);
        unsigned long long after = mask_now();
        if (rc != 0) {
            printf("failed errno=%ld round=%d\n", -rc, r);
            return 3;
        }
        if (after != expected) {
            fprintf(stderr, "round %d: mask %#llx after the load, %#llx before\n", r, after, expected);
            errors++;
        }
    }
    storm_stop = 1;
    printf("done rounds=%d longjmps=%ld mask_errors=%ld eagain=%ld\n", rounds, jumps, errors, eagain);
    return errors == 0 ? 0 : 4;
}

/* ---- handler-loads ------------------------------------------------------ */

static volatile long handler_loads, handler_errors, handler_failures;

static void on_usr1_load(int sig) {
    (void)sig;
    int saved_errno = errno;
    unsigned long long before = mask_now();
    long eagain = 0;
    long rc = load_retrying(500, &eagain);
    if (rc != 0)
        handler_failures++;
    if (mask_now() != before)
        handler_errors++;
    handler_loads++;
    errno = saved_errno;
}

static int mode_handler_loads(int n) {
    on(SIGUSR1, on_usr1_load, 0);
    start_storm(SIGUSR1, 200, gettid_());
    storm_on = 1;
    long errors = 0, eagain = 0;
    double start = now_ms();
    for (int i = 0; i < n; i++) {
        unsigned long long before = mask_now();
        /* ~4 ms to verify: a 200 Hz signal cuts most attempts short. */
        long rc = load_retrying(3000, &eagain);
        if (rc != 0) {
            printf("failed errno=%ld load=%d\n", -rc, i);
            return 3;
        }
        if (mask_now() != before)
            errors++;
    }
    storm_on = 0;
    storm_stop = 1;
    printf("done loads=%d handler_loads=%ld mask_errors=%ld handler_mask_errors=%ld "
           "handler_failures=%ld eagain=%ld ms=%.0f mask=%#llx\n",
           n, handler_loads, errors, handler_errors, handler_failures, eagain, now_ms() - start, mask_now());
    return errors == 0 && handler_errors == 0 && handler_failures == 0 ? 0 : 4;
}

/* ---- children ----------------------------------------------------------- */

static int mode_children(int n) {
    pid_t kids[256];
    if (n > 256) n = 256;
    double start = now_ms();
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            /* Exit one by one, 8 ms apart: each SIGCHLD comes after the last
             * was taken, for as long as the load takes (and longer). */
            struct timespec d = {0, (long)(i + 1) * 8000000L};
            nanosleep(&d, NULL);
            _exit(0);
        }
    }
    /* ~120 ms to verify, one attempt: an EAGAIN is a failure. */
    long rc = load_once(100000);
    for (int i = 0; i < n; i++)
        waitpid(kids[i], NULL, 0);
    if (rc != 0) {
        printf("failed errno=%ld children=%d ms=%.0f\n", -rc, n, now_ms() - start);
        return 3;
    }
    printf("loaded children=%d ms=%.0f\n", n, now_ms() - start);
    return 0;
}

/* ---- own-filter --------------------------------------------------------- */

static int mode_own_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE | 0x1234),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        printf("failed errno=%d (installing the filter)\n", errno);
        return 3;
    }
    errno = 0;
    long r = syscall(SYS_getppid);
    int e = errno;
    long eagain = 0;
    long rc = load_retrying(2000, &eagain);
    printf("done getppid=%ld errno=%d load=%ld\n", r, e, rc);
    return 0;
}

/* ---- zombie-leader ------------------------------------------------------ */

static double wait_secs;

static void on_prof(int sig) { (void)sig; }

static void *zombie_loader(void *arg) {
    (void)arg;
    storm_target = gettid_();
    storm_on = 1;
    double start = now_ms();
    long attempts = 0;
    const char *result = "spinning";
    for (;;) {
        attempts++;
        long rc = load_once(100000);
        if (rc == 0) { result = "loaded"; break; }
        if (rc != -EAGAIN && rc != -EINTR) {
            printf("failed errno=%ld attempts=%ld\n", -rc, attempts);
            fflush(stdout);
            exit(3);
        }
        if (now_ms() - start > wait_secs * 1e3) break;
    }
    storm_stop = 1;
    printf("%s attempts=%ld ms=%.0f\n", result, attempts, now_ms() - start);
    fflush(stdout);
    exit(strcmp(result, "loaded") == 0 ? 0 : 2);
}

static int mode_zombie_leader(void) {
    on(SIGPROF, on_prof, SA_RESTART);
    start_storm(SIGPROF, 1000, 0);
    pthread_t t;
    if (pthread_create(&t, NULL, zombie_loader, NULL) != 0) {
        perror("corners: pthread_create");
        return 3;
    }
    printf("leader exiting\n");
    fflush(stdout);
    pthread_exit(NULL);
}

/* ---- int80 -------------------------------------------------------------- */

/* bpf(2) through the i386 table from 64-bit code: number 357, arguments in
 * ebx, ecx, edx, pointers below 4 GiB. */
static long bpf_int80(int cmd, void *attr, unsigned size) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(357), "b"((long)cmd), "c"((long)(uintptr_t)attr), "d"((long)size)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

static int mode_int80(void) {
    on(SIGPROF, on_prof, SA_RESTART);
    /* Everything the kernel reads must have a 32-bit address. */
    char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) {
        printf("failed errno=%d (mmap MAP_32BIT)\n", errno);
        return 3;
    }
    struct bpf_insn *insns = (struct bpf_insn *)low;
    loop_program(insns, 100000);
    char *license = low + 256;
    strcpy(license, "GPL");
    union bpf_attr *a = (union bpf_attr *)(low + 512);
    memset(a, 0, sizeof *a);
    a->prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a->insn_cnt = 5;
    a->insns = (uint32_t)(uintptr_t)insns;
    a->license = (uint32_t)(uintptr_t)license;
    start_storm(SIGPROF, 1000, gettid_());
    storm_on = 1;
    double start = now_ms();
    long attempts = 0;
    const char *result = "spinning";
    for (;;) {
        attempts++;
        long fd = bpf_int80(BPF_PROG_LOAD, a, sizeof *a);
        if (fd >= 0) { close((int)fd); result = "loaded"; break; }
        if (fd != -EAGAIN && fd != -EINTR) {
            printf("failed errno=%ld attempts=%ld\n", -fd, attempts);
            return 3;
        }
        if (now_ms() - start > wait_secs * 1e3) break;
    }
    storm_stop = 1;
    printf("%s attempts=%ld ms=%.0f\n", result, attempts, now_ms() - start);
    return strcmp(result, "loaded") == 0 ? 0 : 2;
}

/* ---- load-idle ---------------------------------------------------------- */

static int mode_load_idle(int n) {
    on(SIGPROF, on_prof, SA_RESTART);
    start_storm(SIGPROF, 1000, gettid_());
    storm_on = 1;
    long eagain = 0;
    for (int i = 0; i < n; i++) {
        long rc = load_retrying(100000, &eagain);
        if (rc != 0) {
            printf("failed errno=%ld\n", -rc);
            return 3;
        }
    }
    storm_on = 0;
    printf("loaded loads=%d eagain=%ld\n", n, eagain);
    for (;;)
        pause();
}

static int traced(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int yes = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "TracerPid:", 10))
            yes = atoi(line + 10) != 0;
    if (f) fclose(f);
    return yes;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int a = 1;
    if (a < argc && !strcmp(argv[a], "--wait-traced")) {
        a++;
        while (!traced())
            usleep(1000);
        usleep(300000);
    }
    if (a >= argc) {
        fprintf(stderr, "corners: which corner?\n");
        return 64;
    }
    const char *mode = argv[a];
    long n = a + 1 < argc ? atol(argv[a + 1]) : 0;
    wait_secs = n > 0 ? (double)n : 10;
    if (!strcmp(mode, "longjmp")) return mode_longjmp(n > 0 ? (int)n : 5);
    if (!strcmp(mode, "handler-loads")) return mode_handler_loads(n > 0 ? (int)n : 20);
    if (!strcmp(mode, "children")) return mode_children(n > 0 ? (int)n : 40);
    if (!strcmp(mode, "own-filter")) return mode_own_filter();
    if (!strcmp(mode, "zombie-leader")) return mode_zombie_leader();
    if (!strcmp(mode, "int80")) return mode_int80();
    if (!strcmp(mode, "load-idle")) return mode_load_idle(n > 0 ? (int)n : 3);
    fprintf(stderr, "corners: unknown corner %s\n", mode);
    return 64;
}
