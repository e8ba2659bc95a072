package pebblestore

import "github.com/cockroachdb/pebble/v2/vfs"

// WithoutWALRecycling returns fs with WAL recycling turned off: Pebble's
// ReuseForWrite becomes remove-then-create, which the vfs.FS contract allows.
//
// It works around a deadlock in pebble v2.1.7's crashable vfs.MemFS:
// ReuseForWrite read-locks the clone lock and then calls Rename, which
// read-locks it again, so a CrashClone waiting between the two blocks both
// forever. Open applies it to a bare *vfs.MemFS by itself; wrap a MemFS
// before wrapping it further (say in errorfs) when a test calls CrashClone
// while the store writes.
func WithoutWALRecycling(fs vfs.FS) vfs.FS { return noRecycleFS{fs} }

type noRecycleFS struct{ vfs.FS }

func (fs noRecycleFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if err := fs.Remove(oldname); err != nil {
		return nil, err
	}
	return fs.Create(newname, category)
}

// Unwrap returns the wrapped filesystem.
func (fs noRecycleFS) Unwrap() vfs.FS { return fs.FS }
