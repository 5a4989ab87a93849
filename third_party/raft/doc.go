// Copyright (c) HashiCorp, Inc.
// SPDX-License-Identifier: MPL-2.0

// Package raft is hashicorp/raft v1.8.0 with one change of callscribe's: a
// leader writes its log in parallel with replication, counting itself
// towards a commitment only once its own write is durable (AsyncLogStore;
// PATCHES.md).
package raft
