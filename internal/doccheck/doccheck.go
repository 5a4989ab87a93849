// Package doccheck holds a test that every package in the module has a
// package comment saying what it is for.
package doccheck
