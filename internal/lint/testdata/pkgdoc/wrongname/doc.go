// Package other names the wrong package.
package wrongname
