require "fileinto";
if true { fileinto "Work"; stop; }
fileinto "Archive";
