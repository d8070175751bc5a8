package chatbench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// CPUProbe reads the CPU time (user + system) the measured processes have
// used so far.
type CPUProbe func() (time.Duration, error)

// clockTick is the kernel's USER_HZ, the unit of utime and stime in
// /proc/PID/stat (100 on every Linux this runs on).
const clockTick = 100

// ProcessesCPU is a CPUProbe of the processes pids (e.g. every core): the
// sum of their CPU times from /proc.
func ProcessesCPU(pids ...int) CPUProbe {
	return func() (time.Duration, error) {
		var sum time.Duration
		for _, pid := range pids {
			d, err := processCPU(pid)
			if err != nil {
				return 0, err
			}
			sum += d
		}
		return sum, nil
	}
}

// SelfCPU is a CPUProbe of this process (the load generator).
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// processCPU returns the CPU time (user + system) process pid has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read cpu: %w", err)
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime + stime from the text of /proc/PID/stat.
func parseStatCPU(b []byte) (time.Duration, error) {
	// The command name (field 2) may hold spaces: fields count from its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse stat: no command name")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("parse stat: %d fields", len(f))
	}
	// After ')': state is f[0]; utime is field 14 overall, f[11]; stime f[12].
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}
