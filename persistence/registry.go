package persistence

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"
)

// More errors, for the registry and blobs.
var (
	// ErrInUse: DeleteProduct of a product that devices or packages still
	// reference.
	ErrInUse = errors.New("persistence: in use")
	// ErrTooLarge: WriteBlob read more than its maxBytes.
	ErrTooLarge = errors.New("persistence: blob too large")
)

// Store is what an implementation provides: the journal, the registry and
// the transports' sessions.
type Store interface {
	EventStore
	Registry
	Sessions
}

// Protocol is how a product's devices talk to the server.
type Protocol int32

// Protocols; the numbers are stored and only ever grow.
const (
	ProtocolMQTT  Protocol = 1
	ProtocolLWM2M Protocol = 2
)

func (p Protocol) String() string {
	switch p {
	case ProtocolMQTT:
		return "MQTT"
	case ProtocolLWM2M:
		return "LWM2M"
	}
	return fmt.Sprintf("Protocol(%d)", int32(p))
}

// LwM2MSecurity is how an LwM2M product's devices secure their
// conversation with the server.
type LwM2MSecurity int32

// LwM2M security modes; the numbers are stored and only ever grow. The zero
// value is NoSec, so products stored before the setting existed keep
// today's behaviour.
const (
	// LwM2MNoSec: devices register over plain CoAP, or over DTLS when
	// they have a PSK.
	LwM2MNoSec LwM2MSecurity = 0
	// LwM2MPSK: every device has a PSK and registers over DTLS only.
	LwM2MPSK LwM2MSecurity = 1
)

func (m LwM2MSecurity) String() string {
	switch m {
	case LwM2MNoSec:
		return "NOSEC"
	case LwM2MPSK:
		return "PSK"
	}
	return fmt.Sprintf("LwM2MSecurity(%d)", int32(m))
}

// PackageType says what a package upgrades.
type PackageType int32

// Package types; the numbers are stored and only ever grow.
const (
	PackageFirmware PackageType = 1
	PackageSoftware PackageType = 2
)

func (t PackageType) String() string {
	switch t {
	case PackageFirmware:
		return "firmware"
	case PackageSoftware:
		return "software"
	}
	return fmt.Sprintf("PackageType(%d)", int32(t))
}

// Product is a device model: every device belongs to one.
type Product struct {
	ID       string
	Name     string
	Protocol Protocol
	// SoftwarePCP: software upgrades of this (LwM2M) product use PCP over
	// object 19.
	SoftwarePCP bool
	// SkipVersionCheck: the version read before an upgrade only notes a
	// mismatch instead of failing the device.
	SkipVersionCheck bool
	// LwM2MSecurity is the security mode of an LwM2M product's devices
	// (NoSec for MQTT products).
	LwM2MSecurity LwM2MSecurity
	Created       time.Time
}

// CheckDevice tells whether d may belong to p: a device of an LwM2M
// product in PSK mode needs a PSK (ErrInvalid otherwise).
func (p Product) CheckDevice(d Device) error {
	if p.Protocol == ProtocolLWM2M && p.LwM2MSecurity == LwM2MPSK && len(d.PSK) == 0 && !d.HasPSK {
		return fmt.Errorf("%w: device %q has no PSK, and product %q is in LwM2M security mode PSK", ErrInvalid, d.ID, p.ID)
	}
	return nil
}

// Device is a registered device.
//
// Secret (MQTT: the IoTDA password is HMAC-SHA256(key = timestamp, message =
// secret), so the server needs the secret itself) and PSK (LwM2M DTLS) are
// write-only: PutDevice and CreateDevices store them sealed, GetDevice and
// ListDevices return them empty and set HasSecret and HasPSK instead. Only
// DeviceCredentials, for the authenticators, returns them.
type Device struct {
	ID        string
	ProductID string
	Secret    string
	PSK       []byte
	HasSecret bool // set by reads
	HasPSK    bool // set by reads
	Created   time.Time
}

// Credentials are a device's secrets, as DeviceCredentials returns them.
type Credentials struct {
	Secret    string // empty when the device has none
	PSK       []byte // nil when the device has none
	ProductID string // the device's product (the adapters count presence by it)
}

// Group is a named set of devices. Its device IDs are not checked against the
// registry: deleting a device leaves it in its groups, and whoever expands a
// group skips IDs that no longer resolve.
type Group struct {
	ID        string
	Name      string
	DeviceIDs []string
	Created   time.Time
}

// Package is an upgrade package's metadata; its file is a blob (by
// convention under the package's ID).
type Package struct {
	ID             string
	ProductID      string
	Type           PackageType
	Version        string
	SourceVersions []string // empty: any source version
	FileName       string
	Size           int64
	SHA256         [sha256.Size]byte
	Description    string
	CustomInfo     string
	OmitSign       bool
	SegmentSize    uint32 // PCP segment bytes (deviceShard); 0: the default
	CheckCode      uint32 // PCP version check code
	Created        time.Time
}

// TaskRecord is a task's entry in the registry's task index: what listing
// tasks and checking a package's users need. The task itself (targets,
// policy, progress) lives in its actor's journal.
type TaskRecord struct {
	ID        string
	Name      string
	PackageID string
	Created   time.Time
}

// Listing limits: List* return at most limit records; a limit ≤ 0 means
// DefaultListLimit and one above MaxListLimit means MaxListLimit.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// ListLimit applies the listing limits to limit.
func ListLimit(limit int) int {
	switch {
	case limit <= 0:
		return DefaultListLimit
	case limit > MaxListLimit:
		return MaxListLimit
	}
	return limit
}

// MaxCreateDevices bounds one CreateDevices call.
const MaxCreateDevices = 10000

// BlobChunkSize is the size of a stored blob chunk (the last one may be
// shorter).
const BlobChunkSize = 64 << 10

// Registry holds products, devices, groups, package metadata, package
// files (blobs) and the index of tasks. Records are listed in ID byte order, a page at a time:
// List*(after, limit) returns the records whose ID sorts after `after` ("" for
// the first page). Get and Delete of a missing record fail with ErrNotFound;
// invalid IDs (see ValidateID) or fields with ErrInvalid.
//
// References: a device's and a package's product must exist when it is put
// (ErrNotFound otherwise), and DeleteProduct is refused with ErrInUse while a
// device or a package references the product. Deleting a package is allowed
// even when tasks use it: the registry does not know tasks, so the API layer
// checks that; the package's blob is deleted separately (DeleteBlob).
// Deleting a device leaves its ID in groups (see Group).
type Registry interface {
	// PutProduct creates or replaces a product.
	PutProduct(ctx context.Context, p Product) error
	GetProduct(ctx context.Context, id string) (Product, error)
	ListProducts(ctx context.Context, after string, limit int) ([]Product, error)
	DeleteProduct(ctx context.Context, id string) error

	// PutDevice creates or replaces a device. An empty Secret or PSK keeps
	// the stored one, so a device read back and put again keeps its
	// credentials.
	PutDevice(ctx context.Context, d Device) error
	// CreateDevices creates up to MaxCreateDevices devices, all or nothing:
	// an ID that exists already or repeats within the call fails the whole
	// call with ErrExists naming it.
	CreateDevices(ctx context.Context, ds []Device) error
	GetDevice(ctx context.Context, id string) (Device, error)
	ListDevices(ctx context.Context, after string, limit int) ([]Device, error)
	DeleteDevice(ctx context.Context, id string) error
	// DeviceCredentials returns the device's unsealed secret and PSK. It is
	// for the device authenticators only.
	DeviceCredentials(ctx context.Context, id string) (Credentials, error)

	// PutGroup creates or replaces a group.
	PutGroup(ctx context.Context, g Group) error
	GetGroup(ctx context.Context, id string) (Group, error)
	ListGroups(ctx context.Context, after string, limit int) ([]Group, error)
	DeleteGroup(ctx context.Context, id string) error

	// PutPackage creates or replaces a package's metadata.
	PutPackage(ctx context.Context, p Package) error
	GetPackage(ctx context.Context, id string) (Package, error)
	ListPackages(ctx context.Context, after string, limit int) ([]Package, error)
	DeletePackage(ctx context.Context, id string) error

	// PutTask creates or replaces a task's index entry.
	PutTask(ctx context.Context, t TaskRecord) error
	GetTask(ctx context.Context, id string) (TaskRecord, error)
	ListTasks(ctx context.Context, after string, limit int) ([]TaskRecord, error)
	DeleteTask(ctx context.Context, id string) error

	// WriteBlob stores r's bytes, read to EOF, as blob id and returns their
	// size and SHA-256. It is all or nothing: when r fails, ctx ends or r
	// holds more than maxBytes (ErrTooLarge), nothing of the blob remains.
	// A blob is immutable: writing an existing ID fails with ErrExists.
	WriteBlob(ctx context.Context, id string, r io.Reader, maxBytes int64) (int64, [sha256.Size]byte, error)
	// OpenBlob opens blob id for reading. The Blob sees the blob as it was
	// when opened, even if it is deleted meanwhile; Close it when done.
	OpenBlob(ctx context.Context, id string) (Blob, error)
	// DeleteBlob removes blob id.
	DeleteBlob(ctx context.Context, id string) error
}

// Blob is an open blob. ReadAt is safe for concurrent use and cheap at any
// offset; Read and Seek share one offset and are not.
type Blob interface {
	io.ReaderAt
	io.ReadSeeker
	io.Closer
	// Size is the blob's length in bytes.
	Size() int64
	// SHA256 is the digest WriteBlob computed.
	SHA256() [sha256.Size]byte
}

// ValidateProduct checks p's ID, protocol and LwM2M security mode.
func ValidateProduct(p Product) error {
	if err := ValidateID(p.ID); err != nil {
		return fmt.Errorf("product: %w", err)
	}
	if p.Protocol != ProtocolMQTT && p.Protocol != ProtocolLWM2M {
		return fmt.Errorf("%w: product %q has protocol %v", ErrInvalid, p.ID, p.Protocol)
	}
	switch {
	case p.LwM2MSecurity != LwM2MNoSec && p.LwM2MSecurity != LwM2MPSK:
		return fmt.Errorf("%w: product %q has LwM2M security mode %v", ErrInvalid, p.ID, p.LwM2MSecurity)
	case p.LwM2MSecurity == LwM2MPSK && p.Protocol != ProtocolLWM2M:
		return fmt.Errorf("%w: product %q: LwM2M security mode PSK needs protocol LWM2M", ErrInvalid, p.ID)
	}
	return nil
}

// ValidateDevice checks d's ID (see ValidateDeviceID) and product ID.
func ValidateDevice(d Device) error {
	if err := ValidateDeviceID(d.ID); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if err := ValidateID(d.ProductID); err != nil {
		return fmt.Errorf("device %q: product: %w", d.ID, err)
	}
	return nil
}

// ValidateGroup checks g's ID and device IDs.
func ValidateGroup(g Group) error {
	if err := ValidateID(g.ID); err != nil {
		return fmt.Errorf("group: %w", err)
	}
	for _, id := range g.DeviceIDs {
		if err := ValidateID(id); err != nil {
			return fmt.Errorf("group %q: device: %w", g.ID, err)
		}
	}
	return nil
}

// ValidatePackage checks p's IDs, type and version.
func ValidatePackage(p Package) error {
	if err := ValidateID(p.ID); err != nil {
		return fmt.Errorf("package: %w", err)
	}
	if err := ValidateID(p.ProductID); err != nil {
		return fmt.Errorf("package %q: product: %w", p.ID, err)
	}
	if p.Type != PackageFirmware && p.Type != PackageSoftware {
		return fmt.Errorf("%w: package %q has type %v", ErrInvalid, p.ID, p.Type)
	}
	if p.Version == "" {
		return fmt.Errorf("%w: package %q has no version", ErrInvalid, p.ID)
	}
	if p.Size < 0 {
		return fmt.Errorf("%w: package %q has size %d", ErrInvalid, p.ID, p.Size)
	}
	return nil
}

// ValidateTask checks t's IDs.
func ValidateTask(t TaskRecord) error {
	if err := ValidateID(t.ID); err != nil {
		return fmt.Errorf("task: %w", err)
	}
	if err := ValidateID(t.PackageID); err != nil {
		return fmt.Errorf("task %q: package: %w", t.ID, err)
	}
	return nil
}

// ValidateNewDevices checks a CreateDevices call on its own: at most
// MaxCreateDevices devices, each valid, no ID twice. The store then checks
// products and existing IDs.
func ValidateNewDevices(ds []Device) error {
	if len(ds) > MaxCreateDevices {
		return fmt.Errorf("%w: %d devices in one call, at most %d", ErrInvalid, len(ds), MaxCreateDevices)
	}
	seen := make(map[string]struct{}, len(ds))
	for _, d := range ds {
		if err := ValidateDevice(d); err != nil {
			return err
		}
		if _, dup := seen[d.ID]; dup {
			return fmt.Errorf("%w: device %q appears twice in the call", ErrExists, d.ID)
		}
		seen[d.ID] = struct{}{}
	}
	return nil
}
