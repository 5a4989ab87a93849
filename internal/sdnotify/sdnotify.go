// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): READY,
// STOPPING, STATUS and watchdog pings over the datagram socket named by
// NOTIFY_SOCKET. Without that variable (not under systemd) every call is a
// no-op.
package sdnotify

import (
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends one state string, e.g. "READY=1\nSTATUS=serving".
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract namespace
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// Ready says the service is up.
func Ready(status string) error { return Notify("READY=1\nSTATUS=" + status) }

// Stopping says the service is shutting down.
func Stopping(status string) error { return Notify("STOPPING=1\nSTATUS=" + status) }

// Status updates the status line.
func Status(status string) error { return Notify("STATUS=" + status) }

// WatchdogInterval returns half of WatchdogSec (the recommended ping
// interval), or 0 when no watchdog is configured for this process.
func WatchdogInterval() time.Duration {
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(us) * time.Microsecond / 2
}

// Watchdog pings the watchdog.
func Watchdog() error { return Notify("WATCHDOG=1") }
