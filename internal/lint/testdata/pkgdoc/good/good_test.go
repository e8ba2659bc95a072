// Package good's tests may say what they like.
package good
