// Package two and another here.
package two
