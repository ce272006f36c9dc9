package pgtest

import "syscall"

// sysProcAttr runs a server process as cred (nil: as ourselves) and has the
// kernel stop it if the test binary dies without cleaning up (SIGQUIT:
// PostgreSQL's immediate shutdown).
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
}
