module github.com/mcpd-project/mcpd

go 1.26
