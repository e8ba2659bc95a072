// Package gen has a doc; its generated files do not count.
package gen
