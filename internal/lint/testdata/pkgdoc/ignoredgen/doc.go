// Package ignoredgen has a generator helper excluded from builds.
package ignoredgen
