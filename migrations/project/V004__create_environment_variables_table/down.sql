DROP TABLE environment_variables;
