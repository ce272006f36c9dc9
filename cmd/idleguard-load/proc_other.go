//go:build !linux

package main

import (
	"os/exec"
	"time"
)

// On systems without /proc, memory and CPU figures are reported as n/a.

func setChildAttrs(*exec.Cmd) {}

type memInfo struct{ rss, peak int64 }

func (p *replica) memory() memInfo { return memInfo{} }

func (p *replica) resetPeak() bool { return false }

func (p *replica) cpuTime() time.Duration { return 0 }

func selfCPUTime() time.Duration { return 0 }
