package persistence

import "context"

// SharedSecrets keeps the secrets that every node of a cluster must hold
// alike, so that what one node signs or hands out another accepts: the API
// token, the download tokens' signing key, the download TLS certificate. A
// store the nodes share implements it (pgstore), sealing each value with
// its seal key (Sealer, the label "store-secret/<name>"); a store of one
// node does not, and its node keeps them in its data folder.
//
// A secret is written once, by the first node that needs it, and never
// changes but through PutSharedSecret (store copy). Names pass ValidateID.
type SharedSecrets interface {
	// SharedSecret returns the secret name. When there is none yet it
	// stores the value create returns, unless another caller (another
	// node) stored one first: every caller, however many start at once,
	// gets the one value stored.
	SharedSecret(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error)
	// PutSharedSecret creates or replaces the secret name.
	PutSharedSecret(ctx context.Context, name string, value []byte) error
	// ListSharedSecrets calls fn with every secret, by name. The value is
	// only valid during the call.
	ListSharedSecrets(ctx context.Context, fn func(name string, value []byte) error) error
}

// SharedSecretLabel is the additional data a store seals the secret name
// with (see Sealer): apart from every device credential's.
func SharedSecretLabel(name string) string { return "store-secret/" + name }
