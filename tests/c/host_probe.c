/*
 * A host program for tests/host_safety.rs: what a process preloaded with the
 * shim sees of fork, vfork, exec, its own SIGPROF handler, dlopen'd
 * libraries that call syscall(), and errno. Built by the test with cc.
 *
 *   host_probe fork      masks of children forked during and after guarded loads
 *   host_probe vfork     the same with vfork + exec
 *   host_probe ticks N   own SIGPROF handler, 1 kHz POSIX timer, N loads
 *   host_probe dlopen LIB ROUNDS   dlopen/dlclose a library whose code calls syscall()
 *   host_probe errno     errno right after guarded calls
 *   host_probe mask      print this thread's mask (exec target)
 *
 * Output: `key=value` words, one line per check. Loads go through glibc's
 * syscall(SYS_bpf, ...), which the shim interposes. A tgkill SIGPROF storm at
 * 1 kHz (another thread) runs in fork, vfork and dlopen modes, so a load that
 * is not guarded sees EAGAIN (counted in eagain=).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The calling thread's mask as the kernel holds it (8 bytes). */
static uint64_t kmask(void) {
    uint64_t old = 0;
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &old, 8);
    return old;
}

/* r1 = 0; loop: r1 += 1; if r1 < n goto loop; r0 = 0; exit */
static long load_once(int iters) {
    struct bpf_insn insns[5];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; insns[0].dst_reg = 1; insns[0].imm = 0;
    insns[1].code = BPF_ALU64 | BPF_ADD | BPF_K; insns[1].dst_reg = 1; insns[1].imm = 1;
    insns[2].code = BPF_JMP | BPF_JLT | BPF_K; insns[2].dst_reg = 1; insns[2].off = -2; insns[2].imm = iters;
    insns[3].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[4].code = BPF_JMP | BPF_EXIT;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insn_cnt = 5;
    a.insns = (uintptr_t)insns;
    a.license = (uintptr_t)"GPL";
    return syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
}

static atomic_long eagain;

/* Loads, retrying EAGAIN/EINTR like cilium does, for at most 1 s. */
static int load(int iters) {
    uint64_t end = now_ns() + 1000000000ull;
    for (;;) {
        long fd = load_once(iters);
        if (fd >= 0) { close((int)fd); return 0; }
        if ((errno != EAGAIN && errno != EINTR) || now_ns() > end) return errno;
        atomic_fetch_add(&eagain, 1);
    }
}

/* ---- the storm: tgkill SIGPROF at 1 kHz to registered threads ---------- */

static atomic_int storm_tids[8];
static atomic_int storm_on;
static atomic_long storm_handled;
static void on_storm(int sig) { (void)sig; atomic_fetch_add(&storm_handled, 1); }

static void *storm(void *arg) {
    (void)arg;
    while (atomic_load(&storm_on)) {
        for (int i = 0; i < 8; i++) {
            int t = atomic_load(&storm_tids[i]);
            if (t) syscall(SYS_tgkill, getpid(), t, SIGPROF);
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return NULL;
}

static pthread_t storm_thread;
static void storm_start(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_storm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, NULL);
    atomic_store(&storm_on, 1);
    pthread_create(&storm_thread, NULL, storm, NULL);
}
static void storm_add(int slot) { atomic_store(&storm_tids[slot], (int)gettid()); }
static void storm_remove(int slot) { atomic_store(&storm_tids[slot], 0); }
static void storm_stop(void) { atomic_store(&storm_on, 0); pthread_join(storm_thread, NULL); }

/* ---- fork / vfork ------------------------------------------------------- */

static const char *self_exe;

/* Runs `self mask` and returns the mask it printed (exec keeps the mask). */
static uint64_t mask_after_exec_in_child(void) {
    int p[2];
    if (pipe(p)) return ~0ull;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        execl(self_exe, self_exe, "mask", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char buf[64] = {0};
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    waitpid(pid, NULL, 0);
    return n > 0 ? strtoull(buf, NULL, 16) : ~0ull;
}

/* In a forked child: its mask, a guarded load of its own, its mask after,
 * and the mask of a program it execs. Reported through a pipe. */
struct child_report { uint64_t mask, mask_after_load, exec_mask; int load_err; };

static struct child_report forked_child_check(int use_vfork) {
    struct child_report r = {~0ull, ~0ull, ~0ull, -1};
    if (use_vfork) {
        /* vfork: the child may only exec or _exit; we read what the exec'd
         * program prints. The parent thread is suspended until then. */
        int p[2];
        if (pipe(p)) return r;
        pid_t pid = vfork();
        if (pid == 0) {
            dup2(p[1], 1);
            execl(self_exe, self_exe, "mask", (char *)NULL);
            _exit(127);
        }
        close(p[1]);
        char buf[64] = {0};
        ssize_t n = read(p[0], buf, sizeof buf - 1);
        close(p[0]);
        int st = 0;
        waitpid(pid, &st, 0);
        r.exec_mask = n > 0 ? strtoull(buf, NULL, 16) : ~0ull;
        r.mask = r.mask_after_load = r.exec_mask;
        r.load_err = 0;
        return r;
    }
    int p[2];
    if (pipe(p)) return r;
    pid_t pid = fork();
    if (pid == 0) {
        struct child_report c;
        c.mask = kmask();
        c.load_err = load(20000);
        c.mask_after_load = kmask();
        c.exec_mask = mask_after_exec_in_child();
        if (write(p[1], &c, sizeof c) != sizeof c) _exit(1);
        _exit(0);
    }
    close(p[1]);
    if (read(p[0], &r, sizeof r) != sizeof r) r.load_err = -2;
    close(p[0]);
    waitpid(pid, NULL, 0);
    return r;
}

static atomic_int loader_inside;
static atomic_int loader_done;

static void *long_loader(void *arg) {
    (void)arg;
    storm_add(1);
    atomic_store(&loader_inside, 1);
    int e = load(450000); /* ~0.55 s in the verifier */
    storm_remove(1);
    atomic_store(&loader_done, e == 0 ? 1 : 2);
    return NULL;
}

struct thread_job { int use_vfork; uint64_t expect; struct child_report r; };

/* A thread that blocks SIGUSR1 on itself, makes a guarded load, then forks. */
static void *guarded_then_fork(void *arg) {
    struct thread_job *j = arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    storm_add(2);
    int e = load(20000);
    storm_remove(2);
    j->expect = kmask();
    j->r = forked_child_check(j->use_vfork);
    if (e) j->r.load_err = e;
    return NULL;
}

static void print_report(const char *what, uint64_t expect, struct child_report r) {
    printf("%s expect=%llx child=%llx child_after_load=%llx exec=%llx load_err=%d\n", what,
           (unsigned long long)expect, (unsigned long long)r.mask,
           (unsigned long long)r.mask_after_load, (unsigned long long)r.exec_mask, r.load_err);
}

static int fork_mode(int use_vfork) {
    /* The main thread's own mask: SIGUSR2 blocked. */
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    storm_start();

    /* 1. An unguarded thread forks while another thread is inside a guarded load. */
    pthread_t t;
    pthread_create(&t, NULL, long_loader, NULL);
    while (!atomic_load(&loader_inside)) usleep(1000);
    usleep(100000);
    int inside = atomic_load(&loader_done) == 0;
    uint64_t main_mask = kmask();
    struct child_report r = forked_child_check(use_vfork);
    int inside_after = atomic_load(&loader_done) == 0;
    printf("during_load=%d\n", inside && inside_after);
    print_report("unguarded_thread", main_mask, r);
    pthread_join(t, NULL);
    printf("long_load=%s\n", atomic_load(&loader_done) == 1 ? "ok" : "failed");

    /* 2. A thread that just made a guarded load forks. */
    struct thread_job j = {use_vfork, 0, {0}};
    pthread_create(&t, NULL, guarded_then_fork, &j);
    pthread_join(t, NULL);
    print_report("guarded_thread", j.expect, j.r);

    storm_stop();
    printf("eagain=%ld storm_handled=%ld\n", atomic_load(&eagain), atomic_load(&storm_handled));
    return 0;
}

/* ---- own SIGPROF handler under a 1 kHz timer ------------------------------ */

static volatile sig_atomic_t ticks;
static volatile sig_atomic_t overruns;
static timer_t tick_timer;

static void on_tick(int sig) {
    (void)sig;
    int saved = errno;
    ticks++;
    int o = timer_getoverrun(tick_timer); /* async-signal-safe */
    if (o > 0) overruns += o;
    errno = saved;
}

static int ticks_mode(int loads) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, NULL);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGPROF;
    ev._sigev_un._tid = (int)gettid();
    if (timer_create(CLOCK_MONOTONIC, &ev, &tick_timer)) { perror("timer_create"); return 1; }
    struct itimerspec its = {{0, 1000000}, {0, 1000000}};
    uint64_t armed = now_ns();
    timer_settime(tick_timer, 0, &its, NULL);
    int right_after = 0, failed = 0;
    long load_eagain = 0;
    uint64_t in_loads_ns = 0;
    for (int i = 0; i < loads; i++) {
        sig_atomic_t before = ticks;
        uint64_t t0 = now_ns();
        long fd = load_once(30000); /* ~36 ms: ~36 expirations while blocked */
        int e = errno;
        in_loads_ns += now_ns() - t0;
        sig_atomic_t after = ticks;
        if (fd >= 0) close((int)fd);
        else { failed++; if (e == EAGAIN || e == EINTR) load_eagain++; }
        if (after > before) right_after++;
        /* 20 ms outside loads: busy, so ticks arrive as they come */
        uint64_t until = now_ns() + 20000000;
        while (now_ns() < until) {}
    }
    struct itimerspec off = {{0, 0}, {0, 0}};
    timer_settime(tick_timer, 0, &off, NULL);
    uint64_t disarmed = now_ns();
    /* A tick still pending is delivered now (nothing blocks it). */
    long expected = (long)((disarmed - armed) / 1000000);
    printf("loads=%d failed=%d eagain=%ld ticked_during_each=%d ticks=%ld overruns=%ld "
           "accounted=%ld expected=%ld in_loads_ms=%llu\n",
           loads, failed, load_eagain, right_after, (long)ticks, (long)overruns,
           (long)ticks + (long)overruns, expected,
           (unsigned long long)(in_loads_ns / 1000000));
    return 0;
}

/* ---- dlopen / dlclose of a library that calls syscall() ------------------ */

static int dlopen_mode(const char *lib, int rounds) {
    storm_start();
    storm_add(0);
    int ok = 0, getpid_ok = 0;
    for (int i = 0; i < rounds; i++) {
        void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
        long (*lib_load)(int) = (long (*)(int))dlsym(h, "lib_load");
        long (*lib_getpid)(void) = (long (*)(void))dlsym(h, "lib_getpid");
        long (*lib_attempts)(void) = (long (*)(void))dlsym(h, "lib_attempts");
        if (!lib_load || !lib_getpid || !lib_attempts) return 1;
        if (lib_load(20000) >= 0) ok++;
        atomic_fetch_add(&eagain, lib_attempts() - 1);
        if (lib_getpid() == getpid()) getpid_ok++;
        dlclose(h);
    }
    storm_remove(0);
    storm_stop();
    printf("rounds=%d loaded=%d getpid_ok=%d eagain=%ld storm_handled=%ld\n", rounds, ok,
           getpid_ok, atomic_load(&eagain), atomic_load(&storm_handled));
    return 0;
}

/* ---- errno ----------------------------------------------------------------- */

static int errno_mode(void) {
    /* Failing guarded calls: the kernel's errno must come back unchanged. */
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    errno = 0;
    long r1 = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a); /* no insns */
    int e1 = errno;
    errno = 0;
    long r2 = syscall(SYS_bpf, BPF_PROG_LOAD, (void *)8, sizeof a); /* bad pointer: EFAULT */
    int e2 = errno;
    /* A successful one leaves errno as it was (glibc's syscall() does too). */
    errno = ENOTTY;
    long fd = load_once(100);
    int e3 = errno;
    if (fd >= 0) close((int)fd);
    printf("empty_prog=%ld/%d bad_pointer=%ld/%d success_keeps=%s\n", r1, e1, r2, e2,
           fd >= 0 && e3 == ENOTTY ? "yes" : "no");
    return 0;
}

int main(int argc, char **argv) {
    self_exe = "/proc/self/exe";
    static char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) { exe[n] = 0; self_exe = exe; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return 64;
    if (!strcmp(argv[1], "mask")) { printf("%llx\n", (unsigned long long)kmask()); return 0; }
    if (!strcmp(argv[1], "fork")) return fork_mode(0);
    if (!strcmp(argv[1], "vfork")) return fork_mode(1);
    if (!strcmp(argv[1], "ticks")) return ticks_mode(argc > 2 ? atoi(argv[2]) : 20);
    if (!strcmp(argv[1], "dlopen") && argc > 3) return dlopen_mode(argv[2], atoi(argv[3]));
    if (!strcmp(argv[1], "errno")) return errno_mode();
    return 64;
}
