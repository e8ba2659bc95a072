// Package two has one doc here,
package two
