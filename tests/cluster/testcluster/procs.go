package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A process up started and down must stop. The start time (in clock ticks since boot, from
// /proc/PID/stat) tells a process apart from a later one that was given the same id, so down
// never signals a process it did not start.
type process struct {
	pid   int
	start uint64
	name  string
}

const pidsFile = "pids"

// startProcess starts a program in its own session (so a terminal's Ctrl-C or the end of the
// shell that ran up does not reach it), output to DIR/logs/NAME.log, stdin from /dev/null, and
// appends it to DIR/pids.
func startProcess(dir, name string, argv []string, env []string) (process, error) {
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return process{}, err
	}
	log, err := os.OpenFile(filepath.Join(logs, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return process{}, err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return process{}, fmt.Errorf("starting %s: %w", name, err)
	}
	start, err := startTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return process{}, err
	}
	p := process{pid: cmd.Process.Pid, start: start, name: name}
	// up exits while these run on: release them so they are not left as zombies of up, and
	// so that an early exit is still noticed (alive reads /proc, which a zombie keeps).
	go func() { _ = cmd.Wait() }()
	f, err := os.OpenFile(filepath.Join(dir, pidsFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return p, err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%d %d %s\n", p.pid, p.start, p.name)
	return p, err
}

// startTime reads field 22 of /proc/PID/stat: when the process started, in clock ticks.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: split after its last ')'.
	s := string(data)
	close := strings.LastIndexByte(s, ')')
	if close < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(s[close+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// alive says whether p is still the process up started and has not exited.
func (p process) alive() bool {
	start, err := startTime(p.pid)
	if err != nil || start != p.start {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return false
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

func readPids(dir string) ([]process, error) {
	f, err := os.Open(filepath.Join(dir, pidsFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var procs []process
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		var p process
		if _, err := fmt.Sscanf(scanner.Text(), "%d %d %s", &p.pid, &p.start, &p.name); err != nil {
			return nil, fmt.Errorf("%s: bad line %q", filepath.Join(dir, pidsFile), scanner.Text())
		}
		procs = append(procs, p)
	}
	return procs, scanner.Err()
}

// stopAll stops the processes one at a time in reverse start order, as a control plane is
// taken down: its clients first, then the API server, then etcd (an API server that loses
// etcd while clients still watch takes long to stop). Each gets SIGTERM and up to grace to
// exit, then SIGKILL.
func stopAll(procs []process, grace time.Duration) {
	self := os.Getpid()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		// reap runs down itself: it must not signal itself before it has finished.
		if p.pid == self || !p.alive() {
			continue
		}
		_ = unix.Kill(p.pid, unix.SIGTERM)
		deadline := time.Now().Add(grace)
		for p.alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if p.alive() {
			fmt.Fprintf(os.Stderr, "testcluster: %s (pid %d) ignored SIGTERM for %s; killing it\n", p.name, p.pid, grace)
			_ = unix.Kill(p.pid, unix.SIGKILL)
		}
	}
}

func downCommand(args []string) error {
	if len(args) != 1 {
		usage()
	}
	return down(args[0])
}

// down stops what up started in dir and removes dir/pids. A dir with no pids file is already
// down.
func down(dir string) error {
	procs, err := readPids(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	stopAll(procs, 10*time.Second)
	return os.Remove(filepath.Join(dir, pidsFile))
}

func reapCommand(args []string) error {
	fs := flag.NewFlagSet("reap", flag.ExitOnError)
	pid := fs.Int("pid", 0, "the process whose end stops the cluster")
	remove := fs.Bool("remove", false, "delete DIR once the cluster is stopped")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pid <= 0 || fs.NArg() != 1 {
		usage()
	}
	dir := fs.Arg(0)
	if err := reap(*pid, dir); err != nil {
		return err
	}
	if *remove {
		return os.RemoveAll(dir)
	}
	return nil
}

// reap waits for the process pid to end, then stops the cluster in dir: a test binary that
// started its own control plane cannot run code at exit, so this is what takes it down. It
// waits on a pidfd, which the kernel makes readable when the process exits: no polling.
func reap(pid int, dir string) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// Already gone.
		return down(dir)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
	return down(dir)
}
