"""Fleet-admin and technician tools: `import provisioning`."""
