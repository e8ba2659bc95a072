// Package good has its doc in doc.go.
package good
