// Command go-loader loads a socket-filter program with Debian's real cilium/ebpf 0.9.1
// (ebpf.NewProgram), optionally under a signal storm, and prints ONE line describing what
// happened. It is the original incident in a bottle: cilium/ebpf 0.9.1's internal/sys.BPF()
// retries EAGAIN from BPF_PROG_LOAD forever and never masks a signal, so a storm spins it.
//
// Build: static, offline, from source, in GOPATH mode (what tests/support/loaders.rs runs):
//
//	mkdir -p $GP/src/spinguard-go-loader && cp examples/go-loader/*.go $GP/src/spinguard-go-loader/
//	GO111MODULE=off GOPATH=$GP:/usr/share/gocode CGO_ENABLED=0 GOFLAGS= GOPROXY=off \
//	    GOCACHE=$GP/../gocache go build -buildvcs=false -o go-loader spinguard-go-loader
//
// or simply, from this directory: GO111MODULE=off GOPATH=/usr/share/gocode CGO_ENABLED=0 go build
// Needs golang-go (1.19) and golang-github-cilium-ebpf-dev (which brings golang-golang-x-sys-dev).
// Static because Go never calls libc's syscall() anyway: only spinguard's ptrace supervisor can
// reach this loader's bpf() calls, and a static binary proves the supervisor does not rely on the
// dynamic loader.
//
// Flags (same as examples/rust-loader.rs as far as cilium allows; all optional):
//
//	--iters N            verifier cost: `r1 = 0; loop: r1 += 1; if r1 < N goto loop; r0 = 0; exit`
//	                     (~1.2 ms per 1000 iterations; default 100000)
//	--threads N          concurrent loading goroutines, each locked to its own OS thread (default 1)
//	--storm-hz HZ        storm rate per loading thread, 0 = no storm (default 0)
//	--storm tgkill|timer tgkill: a storm goroutine sends the signal to every loading thread HZ
//	                     times a second; timer: each loading thread arms its own
//	                     timer_create(CLOCK_MONOTONIC) with SIGEV_THREAD_ID aimed at itself
//	--storm-signal SIG   name with or without SIG, or a number (default SIGPROF)
//	--wait SECS          give up after SECS (fractions allowed) and report `spinning` (default 2)
//	--max-attempts 0     only 0 (unbounded) is accepted: cilium/ebpf 0.9.1 has no limit
//	--cmd load           only `load` is supported
//	--hold SECS          after the line, stay alive SECS before exiting (default 0): a process
//	                     that loaded and lives on, as an agent does (watch --rescue lets it go)
//
// Output, one line on stdout:
//
//	loaded threads=1 attempts=? max_attempts=? ms=119 signals=0
//	spinning threads=1 attempts=? max_attempts=? ms=2001 signals=2000
//	failed errno=EPERM threads=1 attempts=? max_attempts=? ms=3 signals=0
//
// Exit status: 0 loaded, 2 spinning, 3 failed, 64 usage.
//
// Meaning of each field:
//
//	result        loaded: every thread got a program. failed: at least one NewProgram returned an
//	              error (its text goes to stderr). spinning: no failure, but at least one thread was
//	              still inside NewProgram when --wait ran out; main then exits without waiting for
//	              it (exit_group ends the stuck thread).
//	errno         (failed only) the errno wrapped in the first failing thread's error, by name, or
//	              `?` when the error carries none.
//	threads       number of loading threads.
//	attempts,     always `?`: the EAGAIN retries happen inside cilium's internal/sys.BPF(), out of
//	max_attempts  sight of this program (Go makes raw syscalls; nothing to interpose). spinguard's
//	              supervisor counts them from outside, with ptrace.
//	ms            wall-clock milliseconds from the moment all threads were released to load until
//	              the last one returned (or until --wait expired).
//	signals       tgkill storm: storm signals SENT (successful tgkill calls) to threads still loading.
//	              Go's runtime handles SIGPROF itself (runtime.sighandler: a SIGPROF while no
//	              profile is running is dropped, it never kills the process) and signal.Notify
//	              never sees it, so receipt cannot be counted here. timer storm: `?` (the kernel
//	              generates them; nothing here observes them). No storm: 0.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

const (
	exitLoaded   = 0
	exitSpinning = 2
	exitFailed   = 3
	exitUsage    = 64
)

type options struct {
	iters       int
	threads     int
	stormHz     int
	storm       string
	stormSignal syscall.Signal
	wait        time.Duration
	hold        time.Duration
}

type loaderThread struct {
	tid      int32 // atomic; 0 until known
	done     int32 // atomic
	err      error
	finished time.Time
}

func usageError(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-loader: "+format+"\n", args...)
	os.Exit(exitUsage)
}

func parseSignal(s string) (syscall.Signal, error) {
	names := map[string]syscall.Signal{
		"PROF": syscall.SIGPROF, "VTALRM": syscall.SIGVTALRM, "ALRM": syscall.SIGALRM,
		"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "CHLD": syscall.SIGCHLD,
		"WINCH": syscall.SIGWINCH, "URG": syscall.SIGURG, "IO": syscall.SIGIO,
	}
	name := strings.ToUpper(s)
	name = strings.TrimPrefix(name, "SIG")
	if sig, ok := names[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 1 && n <= 64 && n != 9 && n != 19 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("bad --storm-signal %q (a catchable signal name or number)", s)
}

func parseArgs() options {
	fs := flag.NewFlagSet("go-loader", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	iters := fs.Int("iters", 100000, "loop iterations the verifier must walk (~1.2 ms per 1000)")
	threads := fs.Int("threads", 1, "concurrent loading threads")
	stormHz := fs.Int("storm-hz", 0, "storm rate per loading thread in Hz (0: none)")
	storm := fs.String("storm", "tgkill", "tgkill or timer")
	stormSignal := fs.String("storm-signal", "SIGPROF", "signal the storm sends")
	wait := fs.Float64("wait", 2, "give up after SECS and report spinning")
	maxAttempts := fs.Int("max-attempts", 0, "only 0: cilium/ebpf 0.9.1 retries EAGAIN forever")
	cmd := fs.String("cmd", "load", "only load")
	hold := fs.Float64("hold", 0, "after the line, stay alive SECS before exiting")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			os.Exit(0)
		}
		usageError("%v", err)
	}
	if fs.NArg() > 0 {
		usageError("unexpected argument %q", fs.Arg(0))
	}
	if *iters < 1 || *iters > 1<<31-1 {
		usageError("bad --iters %d (1..=2147483647)", *iters)
	}
	if *threads < 1 || *threads > 1024 {
		usageError("bad --threads %d (1..=1024)", *threads)
	}
	if *stormHz < 0 || *stormHz > 1000000 {
		usageError("bad --storm-hz %d (0..=1000000)", *stormHz)
	}
	if *storm != "tgkill" && *storm != "timer" {
		usageError("bad --storm %q (tgkill or timer)", *storm)
	}
	sig, err := parseSignal(*stormSignal)
	if err != nil {
		usageError("%v", err)
	}
	if !(*wait > 0) || *wait > 86400 {
		usageError("bad --wait %v (seconds, > 0)", *wait)
	}
	if *maxAttempts != 0 {
		usageError("--max-attempts %d: cilium/ebpf 0.9.1 cannot bound its EAGAIN retries (only 0)", *maxAttempts)
	}
	if !(*hold >= 0) || *hold > 86400 {
		usageError("bad --hold %v (seconds, >= 0)", *hold)
	}
	if *cmd != "load" {
		usageError("--cmd %q is not supported by the Go loader (only load)", *cmd)
	}
	return options{
		iters:       *iters,
		threads:     *threads,
		stormHz:     *stormHz,
		storm:       *storm,
		stormSignal: sig,
		wait:        time.Duration(*wait * float64(time.Second)),
		hold:        time.Duration(*hold * float64(time.Second)),
	}
}

// program is the slow-to-verify loop, as raw instructions with an explicit jump offset.
func program(iters int) *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name:    "spin_loop",
		Type:    ebpf.SocketFilter,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.Add.Imm(asm.R1, 1),
			{OpCode: asm.JLT.Op(asm.ImmSource), Dst: asm.R1, Offset: -2, Constant: int64(iters)},
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}
}

// ---- per-thread CLOCK_MONOTONIC timer, raw syscalls (no cgo) ----------------------------------

// sigevent is struct sigevent as the kernel reads it on 64-bit Linux: 64 bytes, the thread id
// (sigev_notify_thread_id) first in the union.
type sigevent struct {
	value  uintptr
	signo  int32
	notify int32
	tid    int32
	_      [44]byte
}

const sigevThreadID = 4 // SIGEV_THREAD_ID

type itimerspec struct {
	interval syscall.Timespec
	value    syscall.Timespec
}

func armThreadTimer(tid int, sig syscall.Signal, hz int) (int32, error) {
	ev := sigevent{signo: int32(sig), notify: sigevThreadID, tid: int32(tid)}
	var id int32 // the kernel's timer_t is an int
	_, _, e := syscall.RawSyscall(syscall.SYS_TIMER_CREATE, uintptr(1 /* CLOCK_MONOTONIC */),
		uintptr(unsafe.Pointer(&ev)), uintptr(unsafe.Pointer(&id)))
	if e != 0 {
		return 0, fmt.Errorf("timer_create: %w", e)
	}
	period := syscall.NsecToTimespec(int64(time.Second) / int64(hz))
	its := itimerspec{interval: period, value: period}
	_, _, e = syscall.RawSyscall6(syscall.SYS_TIMER_SETTIME, uintptr(id), 0,
		uintptr(unsafe.Pointer(&its)), 0, 0, 0)
	if e != 0 {
		deleteTimer(id)
		return 0, fmt.Errorf("timer_settime: %w", e)
	}
	return id, nil
}

func deleteTimer(id int32) {
	syscall.RawSyscall(syscall.SYS_TIMER_DELETE, uintptr(id), 0, 0)
}

// ---- storm --------------------------------------------------------------------------------------

func tgkillStorm(o options, loaders []loaderThread, stop <-chan struct{}, sent *uint64) {
	pid := syscall.Getpid()
	period := time.Second / time.Duration(o.stormHz)
	next := time.Now()
	for {
		next = next.Add(period)
		time.Sleep(time.Until(next))
		select {
		case <-stop:
			return
		default:
		}
		if now := time.Now(); now.After(next.Add(period)) {
			next = now // fell behind (busy machine): keep the rate, do not burst
		}
		for i := range loaders {
			l := &loaders[i]
			tid := atomic.LoadInt32(&l.tid)
			if tid > 0 && atomic.LoadInt32(&l.done) == 0 {
				if syscall.Tgkill(pid, int(tid), o.stormSignal) == nil {
					atomic.AddUint64(sent, 1)
				}
			}
		}
	}
}

// ---- errno names --------------------------------------------------------------------------------

func errnoName(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "?"
	}
	names := map[syscall.Errno]string{
		syscall.EAGAIN: "EAGAIN", syscall.EINTR: "EINTR", syscall.EPERM: "EPERM",
		syscall.EACCES: "EACCES", syscall.EINVAL: "EINVAL", syscall.E2BIG: "E2BIG",
		syscall.ENOMEM: "ENOMEM", syscall.ENOSPC: "ENOSPC", syscall.EFAULT: "EFAULT",
		syscall.ENOSYS: "ENOSYS", syscall.EBADF: "EBADF", syscall.ENOENT: "ENOENT",
		syscall.EBUSY: "EBUSY", syscall.EOPNOTSUPP: "EOPNOTSUPP", syscall.Errno(524): "ENOTSUPP", // kernel-internal, seen from bpf()
	}
	if n, ok := names[errno]; ok {
		return n
	}
	return strconv.Itoa(int(errno))
}

// ---- main ---------------------------------------------------------------------------------------

func main() {
	o := parseArgs()
	spec := program(o.iters)

	// SIGPROF is the Go runtime's own: without a running profile its handler drops it. Any other
	// storm signal gets a Notify so the runtime's default action (which can be "exit") never runs.
	if o.stormSignal != syscall.SIGPROF {
		ch := make(chan os.Signal, 64)
		signal.Notify(ch, o.stormSignal)
		go func() {
			for range ch {
			}
		}()
	}

	loaders := make([]loaderThread, o.threads)
	var ready, finished sync.WaitGroup
	ready.Add(o.threads)
	finished.Add(o.threads)
	release := make(chan struct{})
	var start time.Time
	for i := range loaders {
		l := &loaders[i]
		go func() {
			// Pin the goroutine so the tid the storm aims at is the thread that makes the bpf()
			// call. The goroutine exits still locked, so Go retires the thread with it.
			runtime.LockOSThread()
			tid := syscall.Gettid()
			atomic.StoreInt32(&l.tid, int32(tid))
			ready.Done()
			<-release

			timer, timerErr := int32(0), error(nil)
			armed := false
			if o.stormHz > 0 && o.storm == "timer" {
				timer, timerErr = armThreadTimer(tid, o.stormSignal, o.stormHz)
				if timerErr != nil {
					fmt.Fprintf(os.Stderr, "go-loader: %v\n", timerErr)
				} else {
					armed = true
				}
			}
			prog, err := ebpf.NewProgram(spec)
			if armed {
				deleteTimer(timer)
			}
			if err == nil {
				prog.Close()
			} else if timerErr != nil {
				err = timerErr
			}
			l.err = err
			l.finished = time.Now()
			atomic.StoreInt32(&l.done, 1)
			finished.Done()
		}()
	}

	ready.Wait()
	var sent uint64
	stop := make(chan struct{})
	if o.stormHz > 0 && o.storm == "tgkill" {
		go tgkillStorm(o, loaders, stop, &sent)
	}
	start = time.Now()
	close(release)

	allDone := make(chan struct{})
	go func() {
		finished.Wait()
		close(allDone)
	}()
	spinning := false
	select {
	case <-allDone:
	case <-time.After(o.wait):
		spinning = true
	}
	end := time.Now()
	close(stop)

	var firstErr error
	for i := range loaders {
		l := &loaders[i]
		if atomic.LoadInt32(&l.done) == 0 {
			continue
		}
		if l.err != nil && firstErr == nil {
			firstErr = l.err
		}
	}
	if !spinning {
		end = start
		for i := range loaders {
			if loaders[i].finished.After(end) {
				end = loaders[i].finished
			}
		}
	}

	signals := "0"
	if o.stormHz > 0 {
		if o.storm == "tgkill" {
			signals = strconv.FormatUint(atomic.LoadUint64(&sent), 10)
		} else {
			signals = "?"
		}
	}
	result, code := "loaded", exitLoaded
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "go-loader: %v\n", firstErr)
		result, code = "failed errno="+errnoName(firstErr), exitFailed
	} else if spinning {
		result, code = "spinning", exitSpinning
	}
	fmt.Printf("%s threads=%d attempts=? max_attempts=? ms=%d signals=%s\n",
		result, o.threads, end.Sub(start).Milliseconds(), signals)
	// Live on after the result, as an agent does once its programs are loaded.
	time.Sleep(o.hold)
	// A spinning thread is stuck in the kernel: exit without waiting for it.
	os.Exit(code)
}
