// Package raftlog is a durable, optionally encrypted, segment-file
// implementation of hashicorp/raft's LogStore and StableStore: the point of
// durability of the coordinator (a console's audio frame is acknowledged
// once it is in this log on a quorum).
//
// # Files
//
// A log directory holds:
//
//   - <first index, 20 digits>.seg: segments of records, appended to. The
//     newest is the active segment; a new one is started (created, the
//     directory synced) before a batch when the active one has reached
//     Options.SegmentSize, so a batch never spans two segments.
//   - meta: the log's floor (entries below it are deleted) and, for an
//     encrypted log, a key check. Written atomically (a temporary file,
//     synced, renamed, the directory synced).
//   - stable: the StableStore's keys and values, written the same way.
//   - LOCK: flocked exclusively while the log is open.
//
// # Durability
//
// StoreLogs appends a whole batch with one write and one fdatasync (group
// commit: the raft leader hands over everything waiting); nothing else is
// synced on that path except the directory when a segment is started. A
// batch becomes visible to GetLog only once it is synced. A failed write or
// sync cuts the segment back to where the batch began.
//
// StoreLogsAsync (a leader with followers, raft.AsyncLogStore) writes the
// batch and makes it visible at once, and syncs it on another goroutine,
// reporting the outcome to its caller, which counts the batch as durable
// only then. At most one batch is unsynced: the next write waits for its
// sync, so Open's recovery below holds. A failed sync leaves the log
// refusing writes until reopened.
//
// # Records
//
// A record is a 60-byte header and a payload (segment.go). The header holds
// a magic, a CRC32-C of everything after the CRC field (rest of header and
// payload), a CRC32-C of the header alone (so a damaged length is never
// mistaken for a torn tail), the payload and Data lengths, the entry's type,
// index, term and AppendedAt, flags, and the first index of the StoreLogs
// batch it was written by (with a flag on the batch's last record).
//
// With a key, the payload is a fresh random 12-byte nonce and Data plus
// Extensions sealed with AES-256-GCM under a subkey of the key; the header
// (index, term, type, lengths …) is the additional data. Without a key the
// payload is Data then Extensions.
//
// # Recovery
//
// Open verifies every record's CRCs and that indices run on without a gap
// from segment to segment. Only a crash during the last, unsynced batch may
// leave a bad record, and only at the end of the last segment: such a tail
// is cut off with a warning. A record is taken for a torn tail when it is in
// the last segment and no intact record of a later batch follows it (a
// batch's pages may reach the disk out of order, so intact records of the
// same batch may). Anything else wraps ErrDamaged, naming the file and
// offset, and nothing is changed.
package raftlog
