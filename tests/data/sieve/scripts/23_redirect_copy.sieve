require "copy";
redirect :copy "bob@example.test";
redirect :copy "dave@example.test";
